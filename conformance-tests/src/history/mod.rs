//! The history checker: many concurrent clients drive the real coatcheck middleware over
//! a store with random lifecycle operations and random delays (around each store call and
//! inside handlers); the recorded history and the final store are then checked for
//! anomalies. One line runs it against any store, ours or yours:
//!
//! ```ignore
//! // tests/history.rs of a store crate (feature `history` of coatcheck-conformance)
//! use coatcheck_conformance::history::Deployment;
//! coatcheck_conformance::history!(my_store, requires = Backend::Redis, |instances| async move {
//!     // `instances` clients of one store on one fresh namespace, as several app
//!     // instances behind a load balancer each have their own.
//!     let prefix = coatcheck_conformance::harness::unique_name("hist");
//!     let mut clients = Vec::new();
//!     for _ in 0..instances {
//!         clients.push(my_store::connect(&prefix).await);
//!     }
//!     Deployment::instances(clients)
//! });
//! ```
//!
//! A failing history panics with its seed and, for each anomaly, the sub-history that
//! shows it: each request with the instance that served it, and the faults injected.
//!
//! # The workload
//!
//! Users with two devices each (browsers, and API clients sending a Bearer token), two
//! tabs per device, each tab a stream of requests through [`app`](self) routes: read,
//! increment, put/remove, regenerate, login (with a session cap drawn from the seed),
//! logout, logout everywhere / on other devices, revoke a device, change the password
//! (the credential check), remember-me, flash messages, CSRF-protected forms, writes past
//! the size limit, expiry changes. Every feature the middleware has is on at once: a
//! feature proven alone is not proven. What the store can do (its
//! [`Capabilities`](coatcheck_core::Capabilities)) decides which operations are used:
//! without a user index no revocation by user, without devices no device revocation, and
//! an express-layout store runs under `express_compatible()`.
//!
//! # The invariants
//!
//! No acknowledged write lost, no counter increment applied twice or lost, no session
//! resurrected after a logout or a revocation acknowledged, no request served with a
//! revoked credential, the session cap never exceeded, the user index equal to the live
//! sessions, CSRF and flash guarantees, nothing written past the size limit, and every
//! lifecycle event delivered; the module `check` states each one where it is checked.
//!
//! # Environment
//!
//! - `COATCHECK_HISTORY_SEEDS`: histories per test (default: the test's own, see
//!   [`Config::seeds`]); `COATCHECK_HISTORY_BASE`: the first seed (default fixed, so CI
//!   repeats); `COATCHECK_HISTORY_SEED=n` replays one seed.
//! - `COATCHECK_HISTORY_INSTANCES`: app instances per history (default 3).
//! - `COATCHECK_HISTORY_SURVEY=1`: run every seed, then tally anomalies by kind;
//!   `COATCHECK_HISTORY_TALLY=1`: print requests by operation and outcome.
//! - `COATCHECK_NEMESIS` (`kill,pause,restart,failover`) and `COATCHECK_NEMESIS_GAP_MS` narrow the
//!   faults of a history with a [`FaultTarget`].

mod actix_app;
mod app;
mod check;
mod delay;
mod nemesis;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coatcheck_core::SessionStore;
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use nemesis::{Fault, FaultKind, FaultTarget, Target};
use run::Profile;

/// The store clients one history runs on: one per app instance, all on the same data.
///
/// Most stores need only [`Deployment::instances`] (one client per instance, each with
/// its own connection pool) or [`Deployment::shared`] (one store every instance shares,
/// such as an in-process one). [`Deployment::phased`] runs a history across deploys.
pub struct Deployment {
    phases: Vec<Vec<Arc<dyn SessionStore>>>,
    quiet: Vec<usize>,
    reader: Arc<dyn SessionStore>,
    guard: Box<dyn std::any::Any + Send>,
}

impl Deployment {
    /// One client per app instance (give as many as the factory was asked for).
    ///
    /// # Panics
    /// If `clients` is empty.
    pub fn instances<S: SessionStore>(clients: Vec<S>) -> Self {
        let clients: Vec<Arc<dyn SessionStore>> = clients
            .into_iter()
            .map(|s| Arc::new(s) as Arc<dyn SessionStore>)
            .collect();
        Deployment::of(clients)
    }

    /// One store shared by every app instance.
    pub fn shared<S: SessionStore>(store: S) -> Self {
        let store: Arc<dyn SessionStore> = Arc::new(store);
        let n = instances();
        Deployment::of(vec![store; n])
    }

    /// Clients already behind `Arc<dyn SessionStore>`.
    ///
    /// # Panics
    /// If `clients` is empty.
    pub fn of(clients: Vec<Arc<dyn SessionStore>>) -> Self {
        #[allow(clippy::expect_used)] // a test fixture's misuse
        let reader = clients.first().cloned().expect("at least one store client");
        Deployment {
            reader,
            phases: vec![clients],
            quiet: Vec::new(),
            guard: Box::new(()),
        }
    }

    /// A history in phases: each phase a deploy of another store configuration over the
    /// same data (one client per instance), and `reader`, a store that reads whatever any
    /// phase wrote, for the final state. Between two phases every device uses its session
    /// once (the documented window after a deploy); a phase listed in `quiet` runs only
    /// that sweep.
    pub fn phased(
        phases: Vec<Vec<Arc<dyn SessionStore>>>,
        quiet: Vec<usize>,
        reader: Arc<dyn SessionStore>,
    ) -> Self {
        Deployment {
            phases,
            quiet,
            reader,
            guard: Box::new(()),
        }
    }

    /// Keeps `guard` alive until the history is checked, then drops it (a fixture that
    /// drops its schema or namespace, a server handle).
    pub fn guard(mut self, guard: impl std::any::Any + Send) -> Self {
        self.guard = Box::new(guard);
        self
    }
}

/// One store configuration's histories: its label (in reports), how many seeds, and the
/// faults to inject.
#[derive(Clone)]
pub struct Config {
    label: String,
    seeds: usize,
    faults: Option<Arc<dyn FaultTarget>>,
    remember_policy: bool,
    user_index: bool,
}

impl Config {
    /// `label` names the store configuration in reports; 20 seeds by default.
    pub fn new(label: impl Into<String>) -> Self {
        Config {
            label: label.into(),
            seeds: 20,
            faults: None,
            remember_policy: true,
            user_index: true,
        }
    }

    /// Histories per run when `COATCHECK_HISTORY_SEEDS` is not set.
    pub fn seeds(mut self, n: usize) -> Self {
        self.seeds = n.max(1);
        self
    }

    /// Injects faults into `target` (the private server the store talks to) while each
    /// history runs; the layer's `store_timeout` is then shorter than a pause.
    pub fn faults(mut self, target: impl FaultTarget) -> Self {
        self.faults = Some(Arc::new(target));
        self
    }

    /// Without a `remember_me` policy on the layer: a due touch is then a touch (which
    /// keeps the stored bytes), not a compare-and-set save.
    pub fn without_remember_policy(mut self) -> Self {
        self.remember_policy = false;
        self
    }

    /// Leaves revocation by user out of the workload even if the store keeps a user index.
    pub fn without_user_index(mut self) -> Self {
        self.user_index = false;
        self
    }
}

fn seeds(default: usize) -> Vec<u64> {
    if let Ok(one) = std::env::var("COATCHECK_HISTORY_SEED") {
        #[allow(clippy::expect_used)] // the tester's input: say what is wrong
        return vec![one
            .trim()
            .parse()
            .expect("COATCHECK_HISTORY_SEED is a number")];
    }
    let n = std::env::var("COATCHECK_HISTORY_SEEDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    let base: u64 = std::env::var("COATCHECK_HISTORY_BASE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(20_261_130);
    (0..n as u64).map(|i| base + i).collect()
}

/// How many app instances a history runs (`COATCHECK_HISTORY_INSTANCES`, default 3): the
/// number a [`check`] factory is asked for.
pub fn instances() -> usize {
    std::env::var("COATCHECK_HISTORY_INSTANCES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(3usize)
        .max(1)
}

/// The layer's bound on a store call in a history with faults: a pause lasts longer.
const FAULT_STORE_TIMEOUT: Duration = Duration::from_millis(800);

/// Runs the histories of one store configuration; panics with the report of the first
/// seed that shows an anomaly. `make(n)` is called once per history and gives `n` store
/// clients on a fresh namespace (see [`Deployment`]). [`history!`](crate::history!) wraps
/// this in a test.
pub async fn check<F, Fut>(config: Config, make: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Deployment>,
{
    // COATCHECK_HISTORY_SURVEY=1: run every seed, then tally the anomalies by kind.
    let survey = std::env::var("COATCHECK_HISTORY_SURVEY").is_ok_and(|v| v == "1");
    let found = histories(config, make, survey).await;
    assert!(found.anomalies.is_empty(), "anomalies found (survey mode)");
}

/// What [`survey`] found: the anomalies of every history, by kind.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Survey {
    /// Histories run.
    pub histories: usize,
    /// Faults injected in all.
    pub faults: usize,
    /// Anomalies by kind (`revoked`, `lost`, `counter`, … as the module `check` names
    /// them).
    pub anomalies: std::collections::BTreeMap<&'static str, usize>,
    /// The report of the first history with an anomaly (empty if none had one).
    pub first_report: String,
}

impl Survey {
    /// Anomalies of `kind`.
    pub fn count(&self, kind: &str) -> usize {
        self.anomalies.get(kind).copied().unwrap_or(0)
    }

    /// Anomalies of every kind.
    pub fn total(&self) -> usize {
        self.anomalies.values().sum()
    }
}

/// Runs the histories as [`check`] does but never panics on an anomaly: counts them by
/// kind. For a configuration known to be unsafe — to measure how often it goes wrong, and
/// to show that a fault really reaches what the checker checks (a fault test that passes
/// whatever the store does proves nothing).
pub async fn survey<F, Fut>(config: Config, make: F) -> Survey
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Deployment>,
{
    histories(config, make, true).await
}

async fn histories<F, Fut>(config: Config, make: F, survey: bool) -> Survey
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Deployment>,
{
    let Config {
        label,
        seeds: default_seeds,
        faults,
        remember_policy,
        user_index,
    } = config;
    let label = label.as_str();
    let started = Instant::now();
    let base_profile = Profile::CI;
    let users: Vec<String> = (0..base_profile.users).map(|u| format!("u{u}")).collect();
    let list = seeds(default_seeds);
    let n = instances();
    let mut requests = 0;
    let mut injected = 0;
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    let mut found: std::collections::BTreeMap<&'static str, (u64, f64, usize)> = Default::default();
    let mut first_report = String::new();
    for &seed in &list {
        let Deployment {
            phases,
            quiet,
            reader: store,
            guard,
        } = make(n).await;
        let caps = store.capabilities();
        let express = caps.express_layout;
        let profile = Profile {
            user_index: user_index && caps.user_index,
            devices: base_profile.devices && caps.devices,
            ..base_profile
        };
        // The session cap, drawn from the seed: none, `Evict` or `Refuse` at 2 per user.
        let limit = match seed % 3 {
            0 => None,
            1 => Some((2, coatcheck::LimitPolicy::EvictLeastRecentlySeen)),
            _ => Some((2, coatcheck::LimitPolicy::Refuse)),
        }
        .filter(|_| caps.session_limit);
        let store_timeout = if faults.is_some() {
            FAULT_STORE_TIMEOUT
        } else {
            Duration::from_secs(20)
        };
        let mut features = app::Features::new(&users, limit, store_timeout);
        features.remember_policy = remember_policy;
        let idle = Duration::from_secs(600);
        // Each instance runs on one framework or the other, drawn from the seed: a fleet
        // mixes tower and actix-web instances over one store (the engine is one).
        let app_for = |p: usize| -> Vec<actix_app::Instance> {
            phases[p]
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let salt = (p * 16 + i) as u64 * 0x1000;
                    let delayed: Arc<dyn SessionStore> =
                        Arc::new(crate::kit::Wrapped(delay::Delaying::new(
                            s.clone(),
                            StdRng::seed_from_u64(seed ^ 0x5EED ^ salt),
                            profile.store_pause,
                        )));
                    let rng = StdRng::seed_from_u64(seed ^ 0xA11 ^ salt);
                    if (seed ^ salt.rotate_right(12)) % 2 == 1 {
                        actix_app::instance(
                            delayed,
                            express,
                            rng,
                            profile.handler_pause,
                            idle,
                            &features,
                        )
                    } else {
                        actix_app::Instance::Tower(app::app(
                            delayed,
                            express,
                            rng,
                            profile.handler_pause,
                            idle,
                            &features,
                        ))
                    }
                })
                .collect()
        };
        let start = Instant::now();
        let nemesis = faults.as_ref().map(|t| {
            nemesis::Nemesis::start(
                t.clone(),
                seed,
                start,
                FAULT_STORE_TIMEOUT + Duration::from_millis(400),
            )
        });
        let jars = run::jars(&profile);
        let busy = (phases.len() - quiet.len()).max(1);
        let per_phase = Profile {
            ops_per_tab: (profile.ops_per_tab / busy).max(1),
            ..profile
        };
        let mut events = Vec::new();
        let mut fleet = Vec::new();
        // Every instance stays up until the history is checked: an actix instance's thread
        // runs the tasks a store client spawned while serving it (a Redis connection's
        // driver), which later phases and the final read still use.
        let mut alive = Vec::new();
        for p in 0..phases.len() {
            let apps = app_for(p);
            alive.extend(apps.iter().cloned());
            fleet.push(
                apps.iter()
                    .map(|a| a.framework())
                    .collect::<Vec<_>>()
                    .join("+"),
            );
            let phase_seed = seed.wrapping_add((p as u64) << 32);
            if !quiet.contains(&p) {
                events.extend(run::run(&apps, per_phase, phase_seed, start, &jars).await);
            }
            if p + 1 < phases.len() {
                events.extend(run::sweep(&apps, start, &jars).await);
            }
        }
        // Last, every device signs in as one user at once: the cap, pressed.
        if profile.user_index && limit.is_some() {
            if let Some(last) = alive.get(
                alive
                    .len()
                    .saturating_sub(phases.last().map_or(0, Vec::len))..,
            ) {
                events.extend(run::burst(last, start, &jars, "u0").await);
            }
        }
        let events = run::number(events);
        let fault_log = match nemesis {
            Some(n) => n.stop().await,
            None => Vec::new(),
        };
        injected += fault_log.len();
        requests += events.len();
        for e in &events {
            let what = match (e.op, e.status) {
                (run::Op::Form, s) => {
                    format!("Form {} {s} {}", e.variant(), e.refused.unwrap_or_default())
                }
                (_, 200..=299) if e.acked() => format!("{:?} acked", e.op),
                (_, s) => format!("{:?} {s}", e.op),
            };
            *tally.entry(what).or_insert(0usize) += 1;
        }
        let fin = check::final_state(&*store, &events, &users, profile.user_index).await;
        // Events are delivered off the request path: let the last ones arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let delivered = features
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let setup = check::Setup {
            user_index: profile.user_index,
            limit,
            delivered: &delivered,
            idle,
            faulted: faults.is_some(),
        };
        let anomalies = check::check(&events, &fin, &setup);
        drop(alive);
        drop(phases);
        drop(guard);
        if survey {
            for a in &anomalies {
                found
                    .entry(a.kind)
                    .or_insert((seed, started.elapsed().as_secs_f64(), 0))
                    .2 += 1;
            }
            if !anomalies.is_empty() {
                let report = check::report(label, seed, &events, &fault_log, &anomalies);
                let report = format!("instances per phase: {}\n{report}", fleet.join(" | "));
                keep_report(label, seed, &report);
                if first_report.is_empty() {
                    first_report = report;
                }
            }
        } else if !anomalies.is_empty() {
            let report = check::report(label, seed, &events, &fault_log, &anomalies);
            let report = format!("instances per phase: {}\n{report}", fleet.join(" | "));
            let path = keep_report(label, seed, &report);
            panic!("{report}\n(this report is also in {path})");
        }
    }
    if survey {
        eprintln!("{first_report}");
        for (kind, (seed, at, n)) in &found {
            eprintln!(
                "survey {label}: {kind}: {n} anomalies in {} histories; first at seed {seed}, {at:.1} s in",
                list.len()
            );
        }
    }
    let total: usize = found.values().map(|f| f.2).sum();
    eprintln!(
        "history checker: {label}: {} histories × {n} instances, {requests} requests, {injected} faults, {} ({:.1} s)",
        list.len(),
        if total == 0 { "no anomaly".to_owned() } else { format!("{total} anomalies") },
        started.elapsed().as_secs_f64()
    );
    if std::env::var("COATCHECK_HISTORY_TALLY").is_ok_and(|v| v == "1") {
        eprintln!("history checker: {label}: requests by operation and outcome: {tally:?}");
    }
    Survey {
        histories: list.len(),
        faults: injected,
        anomalies: found.iter().map(|(k, f)| (*k, f.2)).collect(),
        first_report,
    }
}

/// Writes an anomaly report to `<target dir>/history-reports/<label>-<seed>.txt` and
/// prints its path, so no output filter can lose it; returns the path (or why not).
fn keep_report(label: &str, seed: u64, report: &str) -> String {
    // The test binary runs from `<target>/<profile>/deps/`.
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir)
        .join("history-reports");
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = dir.join(format!("{name}-{seed}.txt"));
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, report));
    let shown = match written {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not written: {e})"),
    };
    eprintln!("history checker: {label}: seed {seed}: anomaly report in {shown}");
    shown
}

/// One test that runs the history checker against a store: the store author's one line.
///
/// Forms:
/// - `history!(name, factory)`
/// - `history!(name, requires = Backend::X, factory)`
/// - either with `config = Config` after the name (seeds, faults; the label defaults to
///   the test's name)
///
/// `factory` is a closure `|instances: usize| async { ... Deployment }`, called once per
/// history; it gives `instances` clients of the store on a fresh namespace (see
/// [`Deployment`](crate::history::Deployment)). The test is a multi-threaded tokio test; a
/// missing backend skips it as [`suite!`](crate::suite!) does (a failure under
/// `COATCHECK_REQUIRE_BACKENDS`).
///
/// ```ignore
/// coatcheck_conformance::history!(memory, |_| async {
///     coatcheck_conformance::history::Deployment::shared(coatcheck_memory::MemoryStore::new())
/// });
/// ```
#[macro_export]
macro_rules! history {
    ($name:ident, config = $config:expr, requires = $req:expr, $factory:expr $(,)?) => {
        $crate::history!(@test $name, $config, Some($req), $factory);
    };
    ($name:ident, config = $config:expr, $factory:expr $(,)?) => {
        $crate::history!(@test $name, $config, None, $factory);
    };
    ($name:ident, requires = $req:expr, $factory:expr $(,)?) => {
        $crate::history!(@test $name, $crate::history::Config::new(stringify!($name)), Some($req), $factory);
    };
    ($name:ident, $factory:expr $(,)?) => {
        $crate::history!(@test $name, $crate::history::Config::new(stringify!($name)), None, $factory);
    };
    (@test $name:ident, $config:expr, $req:expr, $factory:expr) => {
        #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !$crate::harness::require($req).await {
                return;
            }
            $crate::history::check($config, $factory).await;
        }
    };
}
