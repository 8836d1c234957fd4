//! The history checker: many concurrent clients drive the real middleware over every store
//! with random lifecycle operations and random delays (around each store call and inside
//! handlers); the recorded history and the final store are then checked for anomalies
//! (`check.rs` states the invariants).
//!
//! Each history runs several app instances (`COATCHECK_HISTORY_INSTANCES`, default 3), as
//! behind a load balancer: each with its own `SessionLayer` and its own store client (its
//! own pool, and on Valkey its own `IFEQ` cache), every request sent to a random one. The
//! `*_faults` tests run against a private server of their own while a nemesis
//! (`nemesis.rs`) kills its connections, pauses it past the layer's `store_timeout` and
//! restarts it, keeping its data.
//!
//! Seeds: each test runs `COATCHECK_HISTORY_SEEDS` histories (default: per store, see
//! `SEEDS`) from seeds derived from `COATCHECK_HISTORY_BASE` (default: a fixed base, so CI is
//! repeatable; set it to explore). `COATCHECK_HISTORY_SEED=n` replays one seed. Operations,
//! instances, delays and faults are drawn from the seed; the interleaving is the machine's,
//! so a replay repeats the workload, and usually the anomaly.
//!
//! On failure the test prints the seed and, for each anomaly, the sub-history that shows it
//! (each request with the instance that served it, and the faults injected).

mod app;
mod check;
mod delay;
mod nemesis;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coatcheck::mongo::MongoStore;
use coatcheck::postgres::PostgresStore;
use coatcheck::redis::RedisStore;
use coatcheck::{ExpressFormat, SessionStore};
use coatcheck_conformance::servers::{PostgresServer, Server};
use coatcheck_conformance::{harness, Backend};
use rand::rngs::StdRng;
use rand::SeedableRng;

use nemesis::{Nemesis, Target};
use run::Profile;

/// The store clients of one history, one per app instance, all on the same data (and
/// whatever must live as long as they do).
type Made = (Vec<Arc<dyn SessionStore>>, Box<dyn std::any::Any + Send>);

/// A history in phases: each phase a deploy of another store configuration over the same
/// data (clients per instance), and a store that reads whatever any phase wrote, for the
/// final state. Between two phases every device uses its session once (`run::sweep`): the
/// documented window after a deploy.
struct Phased {
    phases: Vec<Vec<Arc<dyn SessionStore>>>,
    /// Phases with no workload, only the sweep (every active session read once).
    quiet: Vec<usize>,
    reader: Arc<dyn SessionStore>,
    guard: Box<dyn std::any::Any + Send>,
}

impl From<Made> for Phased {
    fn from((stores, guard): Made) -> Self {
        Phased {
            reader: stores[0].clone(),
            phases: vec![stores],
            quiet: Vec::new(),
            guard,
        }
    }
}

fn seeds(default: usize) -> Vec<u64> {
    if let Ok(one) = std::env::var("COATCHECK_HISTORY_SEED") {
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

/// How many app instances a history runs (`COATCHECK_HISTORY_INSTANCES`, default 3).
fn instances() -> usize {
    std::env::var("COATCHECK_HISTORY_INSTANCES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(3usize)
        .max(1)
}

/// The layer's bound on a store call in a history with faults: a pause lasts longer.
const FAULT_STORE_TIMEOUT: Duration = Duration::from_millis(800);

/// One store configuration's histories.
struct Mode {
    label: &'static str,
    default_seeds: usize,
    express: bool,
    profile: Profile,
    /// The private server the nemesis hits, for a history with faults.
    faults: Option<Arc<Target>>,
    /// The layer has a `remember_me` policy (see `app::Features::remember_policy`).
    remember_policy: bool,
}

impl Mode {
    fn new(label: &'static str, default_seeds: usize, express: bool, user_index: bool) -> Self {
        Mode {
            label,
            default_seeds,
            express,
            profile: profile(user_index),
            faults: None,
            remember_policy: true,
        }
    }

    /// Without a `remember_me` policy: a due touch is a touch (which keeps the stored bytes).
    fn without_remember_policy(mut self) -> Self {
        self.remember_policy = false;
        self
    }

    fn faults(mut self, target: Target) -> Self {
        self.faults = Some(Arc::new(target));
        self
    }
}

/// Runs the histories of one store configuration and fails with the report of the first
/// seed that shows an anomaly.
async fn histories<F, Fut, M>(mode: Mode, make: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = M>,
    M: Into<Phased>,
{
    let Mode {
        label,
        default_seeds,
        express,
        profile,
        faults,
        remember_policy,
    } = mode;
    let started = Instant::now();
    let users: Vec<String> = (0..profile.users).map(|u| format!("u{u}")).collect();
    let list = seeds(default_seeds);
    let n = instances();
    let mut requests = 0;
    let mut injected = 0;
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    // COATCHECK_HISTORY_SURVEY=1: run every seed, then tally the anomalies by kind.
    let survey = std::env::var("COATCHECK_HISTORY_SURVEY").is_ok_and(|v| v == "1");
    let mut found: std::collections::BTreeMap<&'static str, (u64, f64, usize)> = Default::default();
    let mut first_report = String::new();
    for &seed in &list {
        let Phased {
            phases,
            quiet,
            reader: store,
            guard,
        } = make(n).await.into();
        let profile = Profile {
            devices: profile.devices && store.capabilities().devices,
            ..profile
        };
        // The session cap, drawn from the seed: none, `Evict` or `Refuse` at 2 per user.
        let limit = match seed % 3 {
            0 => None,
            1 => Some((2, coatcheck::LimitPolicy::EvictLeastRecentlySeen)),
            _ => Some((2, coatcheck::LimitPolicy::Refuse)),
        }
        .filter(|_| store.capabilities().session_limit);
        let store_timeout = if faults.is_some() {
            FAULT_STORE_TIMEOUT
        } else {
            Duration::from_secs(20)
        };
        let mut features = app::Features::new(&users, limit, store_timeout);
        features.remember_policy = remember_policy;
        let idle = Duration::from_secs(600);
        let app_for = |p: usize| -> Vec<axum::Router> {
            phases[p]
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let salt = (p * 16 + i) as u64 * 0x1000;
                    let delayed: Arc<dyn SessionStore> = Arc::new(delay::Delaying::new(
                        s.clone(),
                        StdRng::seed_from_u64(seed ^ 0x5EED ^ salt),
                        profile.store_pause,
                    ));
                    app::app(
                        delayed,
                        express,
                        StdRng::seed_from_u64(seed ^ 0xA11 ^ salt),
                        profile.handler_pause,
                        idle,
                        &features,
                    )
                })
                .collect()
        };
        let start = Instant::now();
        let nemesis = faults.as_ref().map(|t| {
            Nemesis::start(
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
        for p in 0..phases.len() {
            let apps = app_for(p);
            let phase_seed = seed.wrapping_add((p as u64) << 32);
            if !quiet.contains(&p) {
                events.extend(run::run(&apps, per_phase, phase_seed, start, &jars).await);
            }
            if p + 1 < phases.len() {
                events.extend(run::sweep(&apps, start, &jars).await);
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
        drop(phases);
        drop(guard);
        if survey {
            for a in &anomalies {
                found
                    .entry(a.kind)
                    .or_insert((seed, started.elapsed().as_secs_f64(), 0))
                    .2 += 1;
            }
            if !anomalies.is_empty() && first_report.is_empty() {
                first_report = check::report(label, seed, &events, &fault_log, &anomalies);
            }
        } else if !anomalies.is_empty() {
            panic!(
                "{}",
                check::report(label, seed, &events, &fault_log, &anomalies)
            );
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
        assert!(found.is_empty(), "anomalies found (survey mode)");
    }
    eprintln!(
        "history checker: {label}: {} histories × {n} instances, {requests} requests, {injected} faults, no anomaly ({:.1} s)",
        list.len(),
        started.elapsed().as_secs_f64()
    );
    if std::env::var("COATCHECK_HISTORY_TALLY").is_ok_and(|v| v == "1") {
        eprintln!("history checker: {label}: requests by operation and outcome: {tally:?}");
    }
}

fn profile(user_index: bool) -> Profile {
    Profile {
        user_index,
        ..Profile::CI
    }
}

/// One store shared by every instance: the in-process store cannot be shared otherwise.
fn shared(store: Arc<dyn SessionStore>, n: usize) -> Made {
    (vec![store; n], Box::new(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    histories(Mode::new("memory", 60, false, true), |n| async move {
        shared(Arc::new(coatcheck::memory::MemoryStore::new()), n)
    })
    .await;
}

/// Ids hashed at rest, with the fallback to raw ids on (its extra paths: a miss under the
/// hashed key retried under the raw one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hashed() {
    histories(
        Mode::new("memory_hashed", 20, false, true),
        |n| async move {
            let store = coatcheck::HashedIds::new(coatcheck::memory::MemoryStore::new())
                .expect("native store")
                .raw_fallback(true);
            shared(Arc::new(store), n)
        },
    )
    .await;
}

/// `n` clients of a single Redis or Valkey node at `url` (Valkey 8.1: the `SET … IFEQ`
/// path, each client with its own cache of the bytes it last saw), on one key prefix.
async fn node_stores(
    url: &str,
    express: bool,
    codec: Option<coatcheck::EncryptedCodec>,
    n: usize,
) -> Made {
    let prefix = format!("{}:", harness::unique_name("cc-hist"));
    let stores = node_clients(url, &prefix, express, codec, n).await;
    (stores, Box::new(()))
}

async fn node_clients(
    url: &str,
    prefix: &str,
    express: bool,
    codec: Option<coatcheck::EncryptedCodec>,
    n: usize,
) -> Vec<Arc<dyn SessionStore>> {
    let mut stores: Vec<Arc<dyn SessionStore>> = Vec::new();
    for _ in 0..n {
        let mut b = RedisStore::builder().prefix(prefix.to_owned());
        if express {
            b = b.express(ExpressFormat::new());
        }
        if let Some(codec) = &codec {
            b = b.codec(codec.clone());
        }
        stores.push(Arc::new(b.connect(url).await.expect("connect to Redis")));
    }
    stores
}

async fn node_store(backend: Backend, express: bool, n: usize) -> Made {
    let url = harness::url(backend).await.expect("checked");
    node_stores(&url, express, None, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    histories(Mode::new("redis", 30, false, true), |n| {
        node_store(Backend::Redis, false, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_express() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    // connect-redis keeps no user index: no revocation by user.
    histories(Mode::new("redis_express", 30, true, false), |n| {
        node_store(Backend::Redis, true, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey() {
    if !harness::require(Some(Backend::Valkey)).await {
        return;
    }
    histories(Mode::new("valkey", 30, false, true), |n| {
        node_store(Backend::Valkey, false, n)
    })
    .await;
}

/// Valkey with session data encrypted at rest: the `SET … IFEQ` path compares the bytes it
/// last wrote, which now differ at every write (a fresh nonce). Each history deploys four
/// configurations in turn, as the README's procedure says: sessions in the clear, then
/// encryption with `read_plaintext(true)` (the migration), then a new key first with the
/// old one kept (a deploy in which every active user only reads: the sweep), then the old
/// key retired — each step after the window in which every active session was used. Invariant (with **status**): no request fails (`500`, a
/// `Decode`) for a session written under a key in the ring, and retiring the old key (or
/// the plaintext) after the window ends no active session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_encrypted() {
    if !harness::require(Some(Backend::Valkey)).await {
        return;
    }
    // Without remember-me's policy a read only touches: the rewrite of a session read
    // under an old key is the middleware's, not a side effect of the touch being a save.
    let mode = Mode::new("valkey_encrypted", 15, false, true).without_remember_policy();
    histories(mode, |n| async move {
        use coatcheck::EncryptedCodec;
        use coatcheck_conformance::encryption::keys;
        let url = harness::url(Backend::Valkey).await.expect("checked");
        let prefix = format!("{}:", harness::unique_name("cc-hist"));
        let (old, new) = ([0x11; 32], [0x22; 32]);
        let configs = [
            None,
            Some(EncryptedCodec::new(keys(&[old])).read_plaintext(true)),
            Some(EncryptedCodec::new(keys(&[new, old]))),
            Some(EncryptedCodec::new(keys(&[new]))),
        ];
        let mut phases = Vec::new();
        for codec in configs {
            phases.push(node_clients(&url, &prefix, false, codec, n).await);
        }
        let everything = EncryptedCodec::new(keys(&[new, old])).read_plaintext(true);
        let reader = node_clients(&url, &prefix, false, Some(everything), 1).await;
        Phased {
            phases,
            quiet: vec![2],
            reader: reader[0].clone(),
            guard: Box::new(()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_express() {
    if !harness::require(Some(Backend::Valkey)).await {
        return;
    }
    histories(Mode::new("valkey_express", 20, true, false), |n| {
        node_store(Backend::Valkey, true, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    if !harness::require(Some(Backend::RedisCluster)).await {
        return;
    }
    histories(Mode::new("redis_cluster", 30, false, true), |n| {
        cluster_store(Backend::RedisCluster, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cluster() {
    if !harness::require(Some(Backend::ValkeyCluster)).await {
        return;
    }
    histories(Mode::new("valkey_cluster", 20, false, true), |n| {
        cluster_store(Backend::ValkeyCluster, n)
    })
    .await;
}

async fn cluster_store(backend: Backend, n: usize) -> Made {
    let urls: Vec<String> = harness::url(backend)
        .await
        .expect("checked")
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let prefix = format!("{}:", harness::unique_name("cc-hist"));
    let mut stores: Vec<Arc<dyn SessionStore>> = Vec::new();
    for _ in 0..n {
        stores.push(Arc::new(
            RedisStore::builder()
                .prefix(prefix.clone())
                .connect_cluster(urls.clone())
                .await
                .expect("connect to Redis Cluster"),
        ));
    }
    (stores, Box::new(()))
}

/// Drops the test's schema when the history is done.
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, sql) = (
            self.url.clone(),
            format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
        let _ = std::thread::spawn(move || {
            use sqlx::Connection as _;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::raw_sql(&sql).execute(&mut conn).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// `n` pools on one schema of the database at `url`.
async fn postgres_stores(url: &str, express: bool, n: usize) -> Made {
    let name = harness::unique_name("cc_hist");
    let mut stores: Vec<Arc<dyn SessionStore>> = Vec::new();
    for i in 0..n {
        let mut b = PostgresStore::builder()
            .schema(&name)
            .table("sessions")
            .acquire_timeout(Duration::from_secs(10));
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = b.connect_lazy(url).expect("valid config");
        if i == 0 {
            store.migrate().await.expect("migrate");
        }
        stores.push(Arc::new(store));
    }
    let schema = Schema {
        url: url.to_owned(),
        name,
    };
    (stores, Box::new(schema))
}

async fn postgres_store(express: bool, n: usize) -> Made {
    let url = harness::url(Backend::Postgres).await.expect("checked");
    postgres_stores(&url, express, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    histories(Mode::new("postgres", 25, false, true), |n| {
        postgres_store(false, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_express() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    histories(Mode::new("postgres_express", 25, true, true), |n| {
        postgres_store(true, n)
    })
    .await;
}

/// `n` clients (each its own connection pool) on one collection at `url`.
async fn mongo_stores(url: &str, express: bool, n: usize) -> Made {
    let collection = harness::unique_name("cc_hist");
    let mut stores: Vec<Arc<dyn SessionStore>> = Vec::new();
    for i in 0..n {
        let mut options = coatcheck::mongo::mongodb::options::ClientOptions::parse(url)
            .await
            .expect("MONGODB_URL parses");
        // The Mongo-wire test server does not deduplicate a retryable write the way MongoDB
        // does (by session and transaction number): a compare-and-set save the driver sent
        // again after a reset connection lands once and then answers "no match", which the
        // middleware takes for a conflict and replays — an increment applied twice (found
        // by the nemesis: `counter`, mongo_faults, seed 69001). Against it, writes are not
        // retried by the driver; a reset is then an indeterminate error, as on the others.
        options.retry_writes = Some(false);
        let client = MongoStore::client_with_defaults(options).expect("client");
        let mut b = MongoStore::builder(&client, "coatcheck_test").collection(collection.clone());
        if express {
            b = b.express(ExpressFormat::new());
        }
        let store = if i == 0 {
            b.build_with_indexes().await.expect("store with indexes")
        } else {
            b.build().expect("store")
        };
        stores.push(Arc::new(store));
    }
    (stores, Box::new(()))
}

async fn mongo_store(express: bool, n: usize) -> Made {
    let url = harness::url(Backend::Mongo).await.expect("checked");
    mongo_stores(&url, express, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    histories(Mode::new("mongo", 10, false, true), |n| {
        mongo_store(false, n)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_express() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    // connect-mongo keeps no user index: no revocation by user.
    histories(Mode::new("mongo_express", 10, true, false), |n| {
        mongo_store(true, n)
    })
    .await;
}

// --- Histories under faults, each on a private server of its own -----------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_faults() {
    let Some(server) = Server::redis_durable() else {
        return;
    };
    let url = server.url().to_owned();
    let mode = Mode::new("redis_faults", 8, false, true).faults(Target::Redis(server));
    histories(mode, |n| {
        let url = url.clone();
        async move { node_stores(&url, false, None, n).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_faults() {
    let Some(server) = Server::valkey_durable() else {
        return;
    };
    let url = server.url().to_owned();
    let mode = Mode::new("valkey_faults", 8, false, true).faults(Target::Redis(server));
    histories(mode, |n| {
        let url = url.clone();
        async move { node_stores(&url, false, None, n).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_faults() {
    let Some(server) = PostgresServer::start() else {
        return;
    };
    let url = server.url();
    let mode = Mode::new("postgres_faults", 6, false, true).faults(Target::Postgres(server));
    histories(mode, |n| {
        let url = url.clone();
        async move { postgres_stores(&url, false, n).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_faults() {
    let Some(server) = Server::mongo() else {
        return;
    };
    let url = server.url().to_owned();
    let mode = Mode::new("mongo_faults", 4, false, true).faults(Target::Mongo(server));
    histories(mode, |n| {
        let url = url.clone();
        async move { mongo_stores(&url, false, n).await }
    })
    .await;
}
