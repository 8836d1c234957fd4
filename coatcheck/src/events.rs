//! Lifecycle events: what happened to sessions, delivered to the application's subscriber
//! off the request path.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use coatcheck_core::DeviceHandle;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Events queued or being delivered at most, by default.
pub const DEFAULT_EVENT_QUEUE: usize = 1024;

/// What happened to a session. Names devices by their public handle, never by session id.
///
/// Delivered by [`SessionLayerBuilder::on_event`](crate::SessionLayerBuilder::on_event):
/// **at most once**, in the order emitted, on a delivery thread of the layer's own (never
/// tokio's blocking pool) after the operation succeeded, so a slow or panicking subscriber never delays or fails a response; when
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
    /// `logout_everywhere`, `logout_other_devices`, `revoke_device` or the session limit's
    /// eviction removed sessions.
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
    /// [`CsrfLayer`](crate::CsrfLayer) refused an unsafe request (`403`); nothing of the
    /// session changed.
    CsrfRefused {
        /// Why.
        reason: crate::CsrfReason,
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
    /// The least recently seen sessions, to make room for a new device's login under
    /// [`max_sessions_per_user`](crate::SessionLayerBuilder::max_sessions_per_user) with
    /// `Evict` (sent by that login's request).
    Evicted,
    /// Sessions the [`credential_check`](crate::SessionLayerBuilder::credential_check)
    /// already treated as signed out, removed at a login under
    /// [`max_sessions_per_user`](crate::SessionLayerBuilder::max_sessions_per_user) or by
    /// [`list_user_sessions`](crate::Session::list_user_sessions) (a session found so by a
    /// request of its own is a [`SessionEvent::CredentialsChanged`] instead).
    StaleCredentials,
}

pub(crate) type Subscriber = Arc<dyn Fn(SessionEvent) + Send + Sync>;

type Delivery = (SessionEvent, OwnedSemaphorePermit);

/// The layer's side of the event hook.
///
/// Events go to one delivery thread of the layer's own, never to tokio's blocking pool: a
/// subscriber that blocks would otherwise hold up to the queue's worth of the pool's
/// threads (1024 by default, more than its 512), and every `spawn_blocking` of the
/// application — `tokio::fs`, name lookups, password hashing — would wait behind it (found
/// by a review). A blocked subscriber now blocks its own thread; the queue fills, and
/// events are dropped and counted.
pub(crate) struct Events {
    sender: Option<mpsc::Sender<Delivery>>,
    permits: Arc<Semaphore>,
    dropped: Arc<AtomicU64>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("subscribed", &self.sender.is_some())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish()
    }
}

impl Events {
    pub(crate) fn new(subscriber: Option<Subscriber>, queue: usize) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        // The subscriber runs inside the runtime the layer was built in, if any, so it may
        // `tokio::spawn` (closing a revoked session's WebSockets, say).
        let runtime = tokio::runtime::Handle::try_current().ok();
        let sender = subscriber.and_then(|subscriber| {
            let (tx, rx) = mpsc::channel::<Delivery>();
            let spawned = std::thread::Builder::new()
                .name("coatcheck-events".into())
                .spawn(move || {
                    let _entered = runtime.as_ref().map(|h| h.enter());
                    // Ends when the layer (the last sender) is dropped.
                    for (event, permit) in rx {
                        // A panic in the subscriber loses that event only (counted).
                        if catch_unwind(AssertUnwindSafe(|| subscriber(event))).is_err() {
                            lost.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("the session event subscriber panicked: event lost");
                        }
                        drop(permit);
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the session event thread: events are dropped");
                    None
                }
            }
        });
        Events {
            sender,
            permits: Arc::new(Semaphore::new(queue.max(1))),
            dropped,
        }
    }

    /// Whether anyone listens (callers skip building events otherwise).
    pub(crate) fn on(&self) -> bool {
        self.sender.is_some()
    }

    /// Hands `event` to the delivery thread; never waits. A full queue drops it (counted,
    /// logged).
    pub(crate) fn emit(&self, event: SessionEvent) {
        let Some(sender) = &self.sender else {
            return;
        };
        let sent = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => sender.send((event, permit)).is_ok(),
            Err(_) => false,
        };
        if !sent {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(
                    dropped = n,
                    "session event queue full: events dropped (the subscriber is slower than the traffic)"
                );
            }
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
