//! A store wrapper that sleeps a random while before and after each call of the real store
//! it wraps, so that overlapping requests interleave their store calls in many orders. It
//! never answers for the store: every call reaches the real backend.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coatcheck_core::{SessionStore, StoreError};
use futures_util::future::BoxFuture;
use rand::rngs::StdRng;
use rand::Rng;

use crate::kit::{Call, StoreWrapper};

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

impl StoreWrapper for Delaying {
    fn inner(&self) -> &dyn SessionStore {
        &*self.inner
    }

    fn around<'a, T: Send + 'a>(
        &'a self,
        _what: Call,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move {
            self.pause().await;
            let out = call.await;
            self.pause().await;
            out
        })
    }
}
