//! The history checker: many concurrent clients drive the real middleware over every store
//! with random lifecycle operations and random delays (around each store call and inside
//! handlers); the recorded history and the final store are then checked for anomalies
//! (`check.rs` states the invariants).
//!
//! Seeds: each test runs `COATCHECK_HISTORY_SEEDS` histories (default: per store, see
//! `SEEDS`) from seeds derived from `COATCHECK_HISTORY_BASE` (default: a fixed base, so CI is
//! repeatable; set it to explore). `COATCHECK_HISTORY_SEED=n` replays one seed. Operations
//! and delays are drawn from the seed; the interleaving is the machine's, so a replay
//! repeats the workload, and usually the anomaly.
//!
//! On failure the test prints the seed and, for each anomaly, the sub-history that shows it.

mod app;
mod check;
mod delay;
mod run;

use std::sync::Arc;
use std::time::{Duration, Instant};

use coatcheck::mongo::MongoStore;
use coatcheck::postgres::PostgresStore;
use coatcheck::redis::RedisStore;
use coatcheck::{ExpressFormat, SessionStore};
use coatcheck_conformance::{harness, Backend};
use rand::rngs::StdRng;
use rand::SeedableRng;

use run::Profile;

/// How a history test gets a fresh store (and whatever must live as long as it).
type Made = (Arc<dyn SessionStore>, Box<dyn std::any::Any + Send>);

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

/// Runs the histories of one store configuration and fails with the report of the first
/// seed that shows an anomaly.
async fn histories<F, Fut>(
    label: &str,
    default_seeds: usize,
    express: bool,
    profile: Profile,
    make: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Made>,
{
    let started = Instant::now();
    let users: Vec<String> = (0..profile.users).map(|u| format!("u{u}")).collect();
    let list = seeds(default_seeds);
    let mut requests = 0;
    let mut tally: std::collections::BTreeMap<String, usize> = Default::default();
    // COATCHECK_HISTORY_SURVEY=1: run every seed, then tally the anomalies by kind.
    let survey = std::env::var("COATCHECK_HISTORY_SURVEY").is_ok_and(|v| v == "1");
    let mut found: std::collections::BTreeMap<&'static str, (u64, f64, usize)> = Default::default();
    let mut first_report = String::new();
    for &seed in &list {
        let (store, guard) = make().await;
        let profile = Profile {
            devices: profile.devices && store.capabilities().devices,
            ..profile
        };
        let delayed: Arc<dyn SessionStore> = Arc::new(delay::Delaying::new(
            store.clone(),
            StdRng::seed_from_u64(seed ^ 0x5EED),
            profile.store_pause,
        ));
        // The session cap, drawn from the seed: none, `Evict` or `Refuse` at 2 per user.
        let limit = match seed % 3 {
            0 => None,
            1 => Some((2, coatcheck::LimitPolicy::EvictLeastRecentlySeen)),
            _ => Some((2, coatcheck::LimitPolicy::Refuse)),
        }
        .filter(|_| store.capabilities().session_limit);
        let features = app::Features::new(&users, limit);
        let idle = Duration::from_secs(600);
        let app = app::app(
            delayed,
            express,
            StdRng::seed_from_u64(seed ^ 0xA11),
            profile.handler_pause,
            idle,
            &features,
        );
        let events = run::run(app, profile, seed).await;
        requests += events.len();
        for e in &events {
            let what = match (e.op, e.status) {
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
        };
        let anomalies = check::check(&events, &fin, &setup);
        drop(guard);
        if survey {
            for a in &anomalies {
                found
                    .entry(a.kind)
                    .or_insert((seed, started.elapsed().as_secs_f64(), 0))
                    .2 += 1;
            }
            if !anomalies.is_empty() && first_report.is_empty() {
                first_report = check::report(label, seed, &events, &anomalies);
            }
        } else if !anomalies.is_empty() {
            panic!("{}", check::report(label, seed, &events, &anomalies));
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
        "history checker: {label}: {} histories, {requests} requests, no anomaly ({:.1} s)",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    histories("memory", 60, false, profile(true), || async {
        let s: Arc<dyn SessionStore> = Arc::new(coatcheck::memory::MemoryStore::new());
        (s, Box::new(()) as Box<dyn std::any::Any + Send>)
    })
    .await;
}

/// Ids hashed at rest, with the fallback to raw ids on (its extra paths: a miss under the
/// hashed key retried under the raw one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hashed() {
    histories("memory_hashed", 20, false, profile(true), || async {
        let store = coatcheck::HashedIds::new(coatcheck::memory::MemoryStore::new())
            .expect("native store")
            .raw_fallback(true);
        let s: Arc<dyn SessionStore> = Arc::new(store);
        (s, Box::new(()) as Box<dyn std::any::Any + Send>)
    })
    .await;
}

async fn redis_store(express: bool) -> Made {
    node_store(Backend::Redis, express).await
}

/// A single Redis or Valkey node (Valkey 8.1: the `SET … IFEQ` path).
async fn node_store(backend: Backend, express: bool) -> Made {
    let url = harness::url(backend).await.expect("checked");
    let mut b = RedisStore::builder().prefix(format!("{}:", harness::unique_name("cc-hist")));
    if express {
        b = b.express(ExpressFormat::new());
    }
    let s: Arc<dyn SessionStore> = Arc::new(b.connect(&url).await.expect("connect to Redis"));
    (s, Box::new(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    histories("redis", 30, false, profile(true), || redis_store(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_express() {
    if !harness::require(Some(Backend::Redis)).await {
        return;
    }
    // connect-redis keeps no user index: no revocation by user.
    histories("redis_express", 30, true, profile(false), || {
        redis_store(true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey() {
    if !harness::require(Some(Backend::Valkey)).await {
        return;
    }
    histories("valkey", 30, false, profile(true), || {
        node_store(Backend::Valkey, false)
    })
    .await;
}

/// Valkey with session data encrypted at rest: the `SET … IFEQ` path compares the bytes it
/// last wrote, which now differ at every write (a fresh nonce).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_encrypted() {
    if !harness::require(Some(Backend::Valkey)).await {
        return;
    }
    histories("valkey_encrypted", 15, false, profile(true), || async {
        let url = harness::url(Backend::Valkey).await.expect("checked");
        let store = RedisStore::builder()
            .prefix(format!("{}:", harness::unique_name("cc-hist")))
            .codec(coatcheck_conformance::encryption::codec())
            .connect(&url)
            .await
            .expect("connect to Valkey");
        let s: Arc<dyn SessionStore> = Arc::new(store);
        (s, Box::new(()) as _)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_express() {
    if !harness::require(Some(Backend::Valkey)).await {
        return;
    }
    histories("valkey_express", 20, true, profile(false), || {
        node_store(Backend::Valkey, true)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster() {
    if !harness::require(Some(Backend::RedisCluster)).await {
        return;
    }
    histories("redis_cluster", 30, false, profile(true), || {
        cluster_store(Backend::RedisCluster)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valkey_cluster() {
    if !harness::require(Some(Backend::ValkeyCluster)).await {
        return;
    }
    histories("valkey_cluster", 20, false, profile(true), || {
        cluster_store(Backend::ValkeyCluster)
    })
    .await;
}

async fn cluster_store(backend: Backend) -> Made {
    {
        let urls: Vec<String> = harness::url(backend)
            .await
            .expect("checked")
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        let s: Arc<dyn SessionStore> = Arc::new(
            RedisStore::builder()
                .prefix(format!("{}:", harness::unique_name("cc-hist")))
                .connect_cluster(urls)
                .await
                .expect("connect to Redis Cluster"),
        );
        (s, Box::new(()) as Box<dyn std::any::Any + Send>)
    }
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

async fn postgres_store(express: bool) -> Made {
    let url = harness::url(Backend::Postgres).await.expect("checked");
    let name = harness::unique_name("cc_hist");
    let mut b = PostgresStore::builder()
        .schema(&name)
        .table("sessions")
        .acquire_timeout(Duration::from_secs(10));
    if express {
        b = b.express(ExpressFormat::new());
    }
    let store = b.connect_lazy(&url).expect("valid config");
    store.migrate().await.expect("migrate");
    let s: Arc<dyn SessionStore> = Arc::new(store);
    (s, Box::new(Schema { url, name }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    histories("postgres", 25, false, profile(true), || {
        postgres_store(false)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_express() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    histories("postgres_express", 25, true, profile(true), || {
        postgres_store(true)
    })
    .await;
}

async fn mongo_store(express: bool) -> Made {
    let url = harness::url(Backend::Mongo).await.expect("checked");
    let options = coatcheck::mongo::mongodb::options::ClientOptions::parse(&url)
        .await
        .expect("MONGODB_URL parses");
    let client = MongoStore::client_with_defaults(options).expect("client");
    let mut b =
        MongoStore::builder(&client, "coatcheck_test").collection(harness::unique_name("cc_hist"));
    if express {
        b = b.express(ExpressFormat::new());
    }
    let store = b.build_with_indexes().await.expect("store with indexes");
    let s: Arc<dyn SessionStore> = Arc::new(store);
    (s, Box::new(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    histories("mongo", 10, false, profile(true), || mongo_store(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_express() {
    if !harness::require(Some(Backend::Mongo)).await {
        return;
    }
    // connect-mongo keeps no user index: no revocation by user.
    histories("mongo_express", 10, true, profile(false), || {
        mongo_store(true)
    })
    .await;
}
