//! Metrics, through the [`metrics`](https://docs.rs/metrics) crate's facade (feature
//! `metrics`): the application installs a global recorder (Prometheus, OpenTelemetry,
//! statsd). Samples are handed to one thread of the process that calls the recorder, so a
//! recorder that blocks or panics never delays or fails a request (its samples are dropped
//! instead, and logged once); a request pays a channel send per sample (three to five),
//! measured at 0.7–1.2 µs of CPU per request in all (BENCHMARKS.md, "Metrics cost").
//! Without the feature, or with
//! [`SessionLayerBuilder::metrics(false)`](crate::SessionLayerBuilder::metrics), nothing is
//! sent.
//!
//! No label carries a session id, a user id or a device handle: they would publish
//! personal data and give every session a time series of its own.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `coatcheck.sessions.created` | counter | | a session was stored for the first time |
//! | `coatcheck.sessions.logged_in` | counter | | a `login` succeeded |
//! | `coatcheck.sessions.destroyed` | counter | | `destroy` removed a session |
//! | `coatcheck.sessions.revoked` | counter | `scope` | sessions removed by `logout_everywhere` (`everywhere`), `logout_other_devices` (`other_devices`), `revoke_device` (`device`), or found signed out by the credential check at a login or on the devices page (`stale_credentials`) |
//! | `coatcheck.sessions.evicted` | counter | | sessions evicted by `max_sessions_per_user` with `Evict` |
//! | `coatcheck.sessions.expired_on_read` | counter | | a verified cookie named a session that was gone (expired, past its absolute lifetime, or revoked) |
//! | `coatcheck.credentials.mismatches` | counter | | a session's credential stamp no longer matched: it was ended |
//! | `coatcheck.csrf.refused` | counter | `reason` | the CSRF check refused a request (`cross_site`, `origin`, `missing`, `malformed`, `mismatch`, `not_issued`, `no_session`, `form_too_large`) |
//! | `coatcheck.save.conflicts` | counter | | a compare-and-set write lost to a concurrent one and was replayed |
//! | `coatcheck.save.conflicts_exhausted` | counter | | a write gave up after the retries (`503`) |
//! | `coatcheck.store.errors` | counter | `db.system.name`, `db.operation.name`, `error.type` | a store call failed (`timeout`, `backend`, `decode`, `encode`, `unsupported`) |
//! | `db.client.operation.duration` | histogram (s) | `db.system.name`, `db.operation.name` | every store call, as OpenTelemetry's database conventions name it |
//! | `coatcheck.session.data.size` | histogram (bytes) | | the size of a session's data at each write (see `max_data_bytes`) |

use std::time::Duration;

use coatcheck_core::StoreError;

use crate::events::SessionEvent;

/// What a failed store call counts as (`error.type`), `None` for the outcomes that are not
/// failures (a conflict, a taken id, a refused login, a missing record).
pub(crate) fn error_type(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Backend(source) if source.is::<crate::StoreTimedOut>() => Some("timeout"),
        StoreError::Backend(_) => Some("backend"),
        StoreError::Decode(_) => Some("decode"),
        StoreError::Encode(_) => Some("encode"),
        StoreError::Unsupported(_) => Some("unsupported"),
        _ => None,
    }
}

#[cfg(feature = "metrics")]
mod on {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
    use std::sync::OnceLock;

    use metrics::{Key, Label, Level, Metadata};

    use super::*;
    use crate::events::RevokeScope;

    /// Samples waiting for the recording thread at most.
    const QUEUE: usize = 8192;

    type Label2 = (&'static str, &'static str);

    /// Up to three labels, all static (no id can reach a label), kept inline: a sample
    /// allocates nothing.
    #[derive(Clone, Copy)]
    struct Labels {
        list: [Label2; 3],
        len: usize,
    }

    impl Labels {
        fn of(labels: &[Label2]) -> Self {
            let mut list = [("", ""); 3];
            let len = labels.len().min(3);
            list[..len].copy_from_slice(&labels[..len]);
            Labels { list, len }
        }

        fn get(&self) -> &[Label2] {
            &self.list[..self.len]
        }
    }

    /// One sample: a name, its labels and a value.
    enum Sample {
        Counter(&'static str, Labels, u64),
        Histogram(&'static str, Labels, f64),
    }

    /// Samples go to one thread of the process that hands them to the recorder, so a
    /// recorder that blocks or panics changes nothing for the request (the queue fills and
    /// samples are dropped; a panic is caught and the thread goes on). The request pays a
    /// channel send per sample, without waking the thread while it is busy.
    fn sender() -> Option<&'static SyncSender<Sample>> {
        static SENDER: OnceLock<Option<SyncSender<Sample>>> = OnceLock::new();
        SENDER
            .get_or_init(|| {
                let (tx, rx) = sync_channel::<Sample>(QUEUE);
                std::thread::Builder::new()
                    .name("coatcheck-metrics".into())
                    .spawn(move || {
                        // Idle, it waits for a sample; busy, it drains the queue every
                        // millisecond instead of being woken per sample (a wake is a
                        // syscall on the request's thread).
                        while let Ok(first) = rx.recv() {
                            let mut next = Some(first);
                            while let Some(sample) = next {
                                guarded(sample);
                                next = rx.try_recv().ok().or_else(|| {
                                    std::thread::sleep(DRAIN_EVERY);
                                    rx.try_recv().ok()
                                });
                            }
                        }
                    })
                    .map_err(|e| tracing::error!(error = %e, "no metrics thread; metrics are off"))
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }

    /// How long the recording thread sleeps between two drains while samples keep coming.
    const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

    /// Records one sample; a recorder that panics loses it (logged once).
    fn guarded(sample: Sample) {
        if catch_unwind(AssertUnwindSafe(|| record(sample))).is_err() {
            static ONCE: AtomicBool = AtomicBool::new(false);
            if !ONCE.swap(true, Ordering::Relaxed) {
                tracing::error!("the metrics recorder panicked; the sample is lost (logged once)");
            }
        }
    }

    fn record(sample: Sample) {
        static META: Metadata<'static> =
            Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let key = |name: &'static str, labels: Labels| {
            Key::from_parts(
                name,
                labels
                    .get()
                    .iter()
                    .map(|&(k, v)| Label::from_static_parts(k, v))
                    .collect::<Vec<_>>(),
            )
        };
        metrics::with_recorder(|r| match sample {
            Sample::Counter(name, labels, n) => {
                r.register_counter(&key(name, labels), &META).increment(n)
            }
            Sample::Histogram(name, labels, v) => {
                r.register_histogram(&key(name, labels), &META).record(v)
            }
        });
    }

    fn send(sample: Sample) {
        let Some(tx) = sender() else { return };
        if let Err(TrySendError::Full(_)) = tx.try_send(sample) {
            static ONCE: AtomicBool = AtomicBool::new(false);
            if !ONCE.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the metrics recorder is not keeping up; samples are dropped (logged once)"
                );
            }
        }
    }

    fn count(name: &'static str, labels: &[Label2], n: u64) {
        send(Sample::Counter(name, Labels::of(labels), n));
    }

    pub(crate) fn event(e: &SessionEvent) {
        match e {
            SessionEvent::Created => count("coatcheck.sessions.created", &[], 1),
            SessionEvent::LoggedIn { .. } => count("coatcheck.sessions.logged_in", &[], 1),
            SessionEvent::Destroyed { .. } => count("coatcheck.sessions.destroyed", &[], 1),
            SessionEvent::Revoked {
                scope, count: n, ..
            } => {
                let scope = match scope {
                    RevokeScope::Evicted => return count("coatcheck.sessions.evicted", &[], *n),
                    RevokeScope::Everywhere => "everywhere",
                    RevokeScope::OtherDevices => "other_devices",
                    RevokeScope::Device(_) => "device",
                    RevokeScope::StaleCredentials => "stale_credentials",
                };
                count("coatcheck.sessions.revoked", &[("scope", scope)], *n)
            }
            SessionEvent::NotFoundOnRead => count("coatcheck.sessions.expired_on_read", &[], 1),
            SessionEvent::CredentialsChanged { .. } => {
                count("coatcheck.credentials.mismatches", &[], 1)
            }
            SessionEvent::ConflictsExhausted { .. } => {
                count("coatcheck.save.conflicts_exhausted", &[], 1)
            }
            SessionEvent::CsrfRefused { reason } => {
                count("coatcheck.csrf.refused", &[("reason", reason.as_str())], 1)
            }
        }
    }

    pub(crate) fn conflict() {
        count("coatcheck.save.conflicts", &[], 1);
    }

    pub(crate) fn store_call(
        system: &'static str,
        operation: &'static str,
        elapsed: Duration,
        failed: Option<&'static str>,
    ) {
        send(Sample::Histogram(
            "db.client.operation.duration",
            Labels::of(&[("db.system.name", system), ("db.operation.name", operation)]),
            elapsed.as_secs_f64(),
        ));
        if let Some(kind) = failed {
            count(
                "coatcheck.store.errors",
                &[
                    ("db.system.name", system),
                    ("db.operation.name", operation),
                    ("error.type", kind),
                ],
                1,
            );
        }
    }

    pub(crate) fn data_size(bytes: usize) {
        send(Sample::Histogram(
            "coatcheck.session.data.size",
            Labels::of(&[]),
            bytes as f64,
        ));
    }

    /// Whether store calls are timed.
    pub(crate) const ON: bool = true;
}

#[cfg(not(feature = "metrics"))]
mod on {
    use super::*;

    #[inline(always)]
    pub(crate) fn event(_: &SessionEvent) {}
    #[inline(always)]
    pub(crate) fn conflict() {}
    #[inline(always)]
    pub(crate) fn store_call(_: &'static str, _: &'static str, _: Duration, _: Option<&str>) {}
    #[inline(always)]
    pub(crate) fn data_size(_: usize) {}
    pub(crate) const ON: bool = false;
}

pub(crate) use on::{conflict, data_size, event, store_call, ON};
