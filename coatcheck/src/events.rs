//! Lifecycle events: what happened to sessions, delivered to the application's subscriber
//! off the request path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use coatcheck_core::DeviceHandle;
use tokio::sync::Semaphore;

/// Events queued or being delivered at most, by default.
pub const DEFAULT_EVENT_QUEUE: usize = 1024;

/// What happened to a session. Names devices by their public handle, never by session id.
///
/// Delivered by [`SessionLayerBuilder::on_event`](crate::SessionLayerBuilder::on_event):
/// **at most once**, in no guaranteed order, on tokio's blocking pool after the operation
/// succeeded, so a slow or panicking subscriber never delays or fails a response; when
/// more than the queue's worth are pending, new ones are dropped and counted
/// ([`SessionLayer::events_dropped`](crate::SessionLayer::events_dropped)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A session was stored for the first time.
    Created,
    /// `login(user)` succeeded: the session now lives under a new id with this device
    /// handle (`old_handle`: the device's handle before, `None` for an anonymous session
    /// or a first login).
    LoggedIn {
        /// The principal now.
        user: String,
        /// The handle before the login.
        old_handle: Option<DeviceHandle>,
        /// The handle after it.
        new_handle: Option<DeviceHandle>,
    },
    /// `destroy()` removed the session.
    Destroyed {
        /// Its principal, if one was logged in.
        user: Option<String>,
        /// Its device handle, if one was recorded.
        handle: Option<DeviceHandle>,
    },
    /// `logout_everywhere`, `logout_other_devices` or `revoke_device` removed sessions.
    Revoked {
        /// Whose.
        user: String,
        /// Which of them.
        scope: RevokeScope,
        /// How many were live.
        count: u64,
    },
    /// A request's cookie or token verified, but its session was gone when read (expired,
    /// past its absolute lifetime, or revoked).
    NotFoundOnRead,
    /// A signed-in session's stamp no longer matched its user's credentials (see
    /// [`credential_check`](crate::SessionLayerBuilder::credential_check)): it was
    /// deleted when read, and the request carried on logged out.
    CredentialsChanged {
        /// Its principal.
        user: String,
        /// Its device handle, if one was recorded.
        handle: Option<DeviceHandle>,
    },
    /// A save gave up after this many attempts lost to concurrent saves (`503`).
    ConflictsExhausted {
        /// Attempts made.
        attempts: u32,
    },
}

/// Which sessions a [`SessionEvent::Revoked`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevokeScope {
    /// Every session of the user (`logout_everywhere`).
    Everywhere,
    /// Every other one (`logout_other_devices`).
    OtherDevices,
    /// One device (`revoke_device`).
    Device(DeviceHandle),
}

pub(crate) type Subscriber = Arc<dyn Fn(SessionEvent) + Send + Sync>;

/// The layer's side of the event hook.
pub(crate) struct Events {
    subscriber: Option<Subscriber>,
    permits: Arc<Semaphore>,
    dropped: AtomicU64,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("subscribed", &self.subscriber.is_some())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Events {
    pub(crate) fn new(subscriber: Option<Subscriber>, queue: usize) -> Self {
        Events {
            subscriber,
            permits: Arc::new(Semaphore::new(queue.max(1))),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether anyone listens (callers skip building events otherwise).
    pub(crate) fn on(&self) -> bool {
        self.subscriber.is_some()
    }

    /// Hands `event` to the subscriber on the blocking pool; never waits. A full queue, or
    /// no runtime to run it on, drops it (counted, logged).
    pub(crate) fn emit(&self, event: SessionEvent) {
        let Some(subscriber) = self.subscriber.clone() else {
            return;
        };
        let handle = tokio::runtime::Handle::try_current();
        match (self.permits.clone().try_acquire_owned(), handle) {
            (Ok(permit), Ok(rt)) => {
                // A panic in the subscriber ends this blocking task only; tokio keeps it
                // from anything else.
                rt.spawn_blocking(move || {
                    let _permit = permit;
                    subscriber(event);
                });
            }
            _ => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n % 1000 == 0 {
                    tracing::warn!(
                        dropped = n,
                        "session event queue full: events dropped (the subscriber is slower than the traffic)"
                    );
                }
            }
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
