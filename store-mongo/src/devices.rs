//! Revoking one device, and the per-user session limit under a lease lock.
//!
//! MongoDB (and the wire-compatible servers this store runs on) cannot count a user's
//! sessions and insert one more atomically without a multi-document transaction, which a
//! standalone server lacks. A limited create therefore takes a per-user **lease**: a
//! document `{_id: "limit:<user>", expires_at: now + 10 s, token}` in the sessions
//! collection (an `_id` no session id can have: `:` is not in their alphabet), inserted
//! with the unique `_id` as the mutex, taken over only once its lease has expired, removed
//! by its holder with its token. Under it: count the live sessions, evict or refuse, insert.
//! Two limited creates of one user are serialised as long as a holder finishes within the
//! lease (every step is a single bounded command); the TTL index removes a lease abandoned
//! by a crashed process.
//!
//! The holder runs as a task of its own, to completion: a caller dropped while it holds the
//! lease (the layer's `store_timeout`, a client gone) must not leave the lease behind, which
//! would refuse every limited login of that user until it expires (`LEASE`).

use std::time::Duration;

use coatcheck_core::{LimitPolicy, Record, SessionLimit, SessionStore, StoreError};
use mongodb::bson::{doc, Bson, Document};

use crate::layout::{date, F_CREATED, F_HANDLE, F_ID, F_SEEN, F_USER};
use crate::store::{backend, is_duplicate_key};
use crate::MongoStore;

/// How long a limit lease holds before another create may take it over.
const LEASE: Duration = Duration::from_secs(10);
/// How long a create waits for a user's lease before failing with a backend error
/// (`LeaseBusy`).
///
/// Strictly shorter than the bound callers put on one store call (coatcheck's default
/// `store_timeout` is 5 s), with room left for the last attempt and the work under the
/// lease: a create that cannot get the lease fails with this store's own error, not with
/// the caller's timeout. Keep `LEASE_WAIT` < `store_timeout` < `LEASE`.
const LEASE_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
#[error("the per-user session limit lease of this user stayed taken for {0:?}")]
struct LeaseBusy(Duration);

impl MongoStore {
    fn native_only(&self, what: &'static str) -> Result<(), StoreError> {
        match self.layout.seen_field() {
            Some(_) => Ok(()),
            None => Err(StoreError::Unsupported(what)),
        }
    }

    /// One `delete_many` of the user's live documents with that handle (during a rotation
    /// the old and the new id share it).
    pub(crate) async fn remove_device(&self, user: &str, handle: &str) -> Result<bool, StoreError> {
        self.native_only("devices in connect-mongo's layout")?;
        let now = self.now();
        let result = self
            .revocations
            .delete_many(self.live(doc! { F_USER: user, F_HANDLE: handle }, now))
            .await
            .map_err(backend)?;
        Ok(result.deleted_count > 0)
    }

    async fn acquire(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let now = self.now();
            let lease = doc! {
                F_ID: key,
                self.layout.expires_field(): date(now + LEASE),
                "token": token,
            };
            match self.collection.insert_one(&lease).await {
                Ok(_) => return Ok(()),
                Err(e) if is_duplicate_key(&e) => {}
                Err(e) => return Err(backend(e)),
            }
            // Taken: take it over if its lease ran out.
            let taken = self
                .collection
                .find_one_and_update(
                    doc! { F_ID: key, self.layout.expires_field(): { "$lte": date(now) } },
                    doc! { "$set": { self.layout.expires_field(): date(now + LEASE), "token": token } },
                )
                .await
                .map_err(backend)?;
            if taken.is_some() {
                tracing::warn!("took over an expired session-limit lease");
                return Ok(());
            }
            if started.elapsed() > LEASE_WAIT {
                return Err(StoreError::backend(LeaseBusy(LEASE_WAIT)));
            }
            attempt += 1;
            let ms = u64::from(attempt.min(20));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        self.collection
            .delete_one(doc! { F_ID: key, "token": token })
            .await
            .map_err(backend)
            .map(drop)
    }

    pub(crate) async fn create_capped(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.native_only("a session limit in connect-mongo's layout")?;
        let Some(user) = record.user_id.as_deref() else {
            return Err(StoreError::Unsupported(
                "create_limited of a record without user",
            ));
        };
        let (store, record, user) = (self.clone(), record.clone(), user.to_owned());
        // A task of its own: dropping this future after the lease is taken leaves the
        // holder running until it has released it (see the module docs).
        tokio::spawn(async move { store.create_leased(&record, &user, limit).await })
            .await
            .unwrap_or_else(|e| Err(StoreError::backend(e)))
    }

    /// Takes the user's lease, creates under it, releases it.
    async fn create_leased(
        &self,
        record: &Record,
        user: &str,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let key = format!("limit:{user}");
        let token = coatcheck_core::SessionId::generate();
        self.acquire(&key, token.as_str()).await?;
        let outcome = self.create_under_lease(record, user, limit).await;
        // Released whatever happened; a failed release is left to the lease's expiry.
        if let Err(e) = self.release(&key, token.as_str()).await {
            tracing::warn!(error = %e, "could not release a session-limit lease");
        }
        outcome
    }

    async fn create_under_lease(
        &self,
        record: &Record,
        user: &str,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        let now = self.now();
        // A create that cannot happen (its id is a live session's) evicts nobody.
        let taken = self
            .collection
            .find_one(self.live(doc! { F_ID: record.id.as_str() }, now))
            .projection(doc! { F_ID: 1 })
            .await
            .map_err(backend)?;
        if taken.is_some() {
            return Err(StoreError::IdTaken);
        }
        let mut cursor = self
            .collection
            .find(self.live(doc! { F_USER: user }, now))
            .projection(doc! { F_ID: 1, F_SEEN: 1, F_CREATED: 1 })
            .await
            .map_err(backend)?;
        let mut live: Vec<(i64, String)> = Vec::new();
        while cursor.advance().await.map_err(backend)? {
            let d: Document = cursor.deserialize_current().map_err(backend)?;
            let seen = [F_SEEN, F_CREATED]
                .iter()
                .find_map(|f| d.get_datetime(f).ok())
                .map_or(0, |t| t.timestamp_millis());
            if let Ok(id) = d.get_str(F_ID) {
                live.push((seen, id.to_owned()));
            }
        }
        live.sort();
        // At least 1 (a `max` of 0, set on the public field, would evict past the end).
        let max = usize::try_from(limit.max.max(1)).unwrap_or(usize::MAX);
        let mut evicted = 0;
        if live.len() >= max {
            if limit.policy == LimitPolicy::Refuse {
                return Err(StoreError::LimitReached);
            }
            let victims: Vec<Bson> = live[..=live.len() - max]
                .iter()
                .map(|(_, id)| Bson::String(id.clone()))
                .collect();
            evicted = self
                .revocations
                .delete_many(doc! { F_ID: { "$in": victims }, F_USER: user })
                .await
                .map_err(backend)?
                .deleted_count;
        }
        self.create(record).await?;
        Ok(evicted)
    }
}
