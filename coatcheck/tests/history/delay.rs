//! A store wrapper that sleeps a random while before and after each call of the real store
//! it wraps, so that overlapping requests interleave their store calls in many orders. It
//! never answers for the store: every call reaches the real backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use coatcheck::{
    Capabilities, Record, SessionId, SessionInfo, SessionLimit, SessionStore, StoreError, Timestamp,
};
use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug)]
pub struct Delaying {
    inner: Arc<dyn SessionStore>,
    rng: Mutex<StdRng>,
    /// Longest pause, in microseconds.
    max_us: u64,
}

impl Delaying {
    pub fn new(inner: Arc<dyn SessionStore>, rng: StdRng, max: Duration) -> Self {
        Delaying {
            inner,
            rng: Mutex::new(rng),
            max_us: max.as_micros() as u64,
        }
    }

    async fn pause(&self) {
        let us = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            // Half the calls go straight through, the rest wait up to `max_us`.
            if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(0..=self.max_us)
            }
        };
        if us == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

macro_rules! delayed {
    ($self:ident, $call:expr) => {{
        $self.pause().await;
        let out = $call.await;
        $self.pause().await;
        out
    }};
}

#[async_trait]
impl SessionStore for Delaying {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        delayed!(self, self.inner.create(record))
    }
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        delayed!(self, self.inner.load(id))
    }
    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        delayed!(self, self.inner.save(record))
    }
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        delayed!(self, self.inner.touch(id, expires_at))
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        delayed!(self, self.inner.delete(id))
    }
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        delayed!(self, self.inner.delete_version(id, version))
    }
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        delayed!(self, self.inner.list_for_user(user_id))
    }
    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        delayed!(self, self.inner.delete_for_user(user_id, except))
    }
    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        delayed!(self, self.inner.delete_device(user_id, handle))
    }
    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        delayed!(self, self.inner.create_limited(record, limit))
    }
    async fn delete_expired(&self) -> Result<u64, StoreError> {
        delayed!(self, self.inner.delete_expired())
    }
    async fn load_listed(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        delayed!(self, self.inner.load_listed(id))
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn stored_id(&self, id: &SessionId) -> SessionId {
        self.inner.stored_id(id)
    }
}
