//! Metrics (issue 31), read back through `metrics-util`'s debugging recorder installed as
//! the global recorder (its own test binary: there is one global recorder per process).
//! One test, in steps, because the recorder is global: what each step sends is named, no
//! label carries a session id, user id or handle, and a recorder that panics or blocks
//! changes nothing for the requests.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{CsrfLayer, FlashLevel, KeyRing, Secure, Session, SessionError, SessionLayer};
use common::Jar;
use http::{Request, StatusCode};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::Barrier;

const SECRET: &str = "metrics test secret, long enough: 0123456789ab";
const USER: &str = "ada-lovelace-user-id";

/// The debugging recorder, or one that panics (1) or blocks forever (2).
struct Switch {
    inner: DebuggingRecorder,
    mode: Arc<AtomicU8>,
}

impl Switch {
    fn check(&self) {
        match self.mode.load(Ordering::SeqCst) {
            1 => panic!("a recorder that panics"),
            2 => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            _ => {}
        }
    }
}

impl Recorder for Switch {
    fn describe_counter(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_counter(k, u, d)
    }
    fn describe_gauge(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_gauge(k, u, d)
    }
    fn describe_histogram(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.inner.describe_histogram(k, u, d)
    }
    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        self.check();
        self.inner.register_counter(key, m)
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        self.check();
        self.inner.register_gauge(key, m)
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        self.check();
        self.inner.register_histogram(key, m)
    }
}

#[derive(Clone)]
struct St {
    barrier: Arc<Barrier>,
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.login(USER).await?;
    session.flash(FlashLevel::Info, "hi").await?;
    Ok("ok")
}

async fn token(session: Session) -> Result<String, SessionError> {
    session.csrf_token().await
}

async fn racing_incr(State(st): State<St>, session: Session) -> Result<String, SessionError> {
    session.get::<u64>("n").await?;
    st.barrier.wait().await;
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn destroy(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("bye")
}

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(format!("{:?}", session.user_id().await?))
}

fn app() -> Router {
    app_recording(true)
}

fn app_recording(metrics: bool) -> Router {
    let keys = KeyRing::new([SECRET]).expect("secret");
    let layer = SessionLayer::builder(MemoryStore::new(), keys)
        .secure(Secure::Never)
        .metrics(metrics)
        .build()
        .expect("config");
    Router::new()
        .route("/login", post(login))
        .route("/token", get(token))
        .route("/racing_incr", post(racing_incr))
        .route("/destroy", post(destroy))
        .route("/read", get(read))
        .with_state(St {
            barrier: Arc::new(Barrier::new(2)),
        })
        .layer(CsrfLayer::new().exempt("/login").exempt("/racing_incr"))
        .layer(layer)
}

/// A recorded value (the debugging recorder's, owned and added up).
#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    /// coatcheck records no gauge.
    Other,
    Histogram(Vec<f64>),
}

impl From<DebugValue> for Value {
    fn from(v: DebugValue) -> Self {
        match v {
            DebugValue::Counter(n) => Value::Counter(n),
            DebugValue::Gauge(_) => Value::Other,
            DebugValue::Histogram(h) => {
                Value::Histogram(h.into_iter().map(|x| x.into_inner()).collect())
            }
        }
    }
}

type Seen = HashMap<(String, Vec<(String, String)>), Value>;

/// Everything recorded so far: the debugging recorder's snapshots are deltas (taking one
/// resets its counters and drains its histograms), so they are added up here.
fn snapshot(s: &Snapshotter) -> Seen {
    static TOTAL: std::sync::Mutex<Option<Seen>> = std::sync::Mutex::new(None);
    let mut total = TOTAL.lock().unwrap_or_else(|e| e.into_inner());
    let total = total.get_or_insert_with(Seen::new);
    for (k, _, _, v) in s.snapshot().into_vec() {
        let v = Value::from(v);
        let key = k.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let entry = total.entry((key.name().to_owned(), labels));
        match (entry, v) {
            (std::collections::hash_map::Entry::Occupied(mut o), v) => match (o.get_mut(), v) {
                (Value::Counter(a), Value::Counter(b)) => *a += b,
                (Value::Histogram(a), Value::Histogram(b)) => a.extend(b),
                (slot, v) => *slot = v,
            },
            (std::collections::hash_map::Entry::Vacant(e), v) => {
                e.insert(v);
            }
        }
    }
    total.clone()
}

fn counter(seen: &Seen, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    match seen.get(&(name.to_owned(), labels)) {
        Some(Value::Counter(n)) => *n,
        _ => 0,
    }
}

/// Waits until the recording thread has handed over what `ready` looks for.
async fn wait_for(s: &Snapshotter, ready: impl Fn(&Seen) -> bool) -> Seen {
    for _ in 0..500 {
        let seen = snapshot(s);
        if ready(&seen) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    snapshot(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happens_name_no_one_and_never_hold_up_a_request() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mode = Arc::new(AtomicU8::new(0));
    metrics::set_global_recorder(Switch {
        inner: recorder,
        mode: mode.clone(),
    })
    .expect("the only recorder of this binary");
    let app = app();

    // A sign-in, a CSRF refusal, a conflict, a sign-out.
    let mut jar = Jar::default();
    assert_eq!(jar.send(&app, "/login").await.0, StatusCode::OK);
    let cookie = jar.cookie.clone().expect("a session");
    jar.get(&app, "/token").await;
    let (status, _) = jar
        .call(
            &app,
            Request::post("/destroy").header("x-csrf-token", "nope"),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (mut a, mut b) = (jar.clone(), jar.clone());
    let (app_a, app_b) = (app.clone(), app.clone());
    let (ra, rb) = tokio::join!(
        tokio::spawn(async move { a.send(&app_a, "/racing_incr").await }),
        tokio::spawn(async move { b.send(&app_b, "/racing_incr").await }),
    );
    assert_eq!(ra.expect("a").0, StatusCode::OK);
    assert_eq!(rb.expect("b").0, StatusCode::OK);
    let (_, token) = jar.get(&app, "/token").await;
    let (status, _) = jar
        .call(
            &app,
            Request::post("/destroy").header("x-csrf-token", token),
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The old cookie now names a session that is gone.
    let mut stale = Jar {
        cookie: Some(cookie.clone()),
        ..Jar::default()
    };
    stale.get(&app, "/read").await;

    let seen = wait_for(&snapshotter, |s| {
        counter(s, "coatcheck.sessions.expired_on_read", &[]) >= 1
            && counter(s, "coatcheck.sessions.destroyed", &[]) >= 1
    })
    .await;
    assert_eq!(
        counter(&seen, "coatcheck.sessions.created", &[]),
        1,
        "{seen:?}"
    );
    assert_eq!(counter(&seen, "coatcheck.sessions.logged_in", &[]), 1);
    assert_eq!(counter(&seen, "coatcheck.sessions.destroyed", &[]), 1);
    assert_eq!(counter(&seen, "coatcheck.sessions.expired_on_read", &[]), 1);
    assert_eq!(
        counter(&seen, "coatcheck.csrf.refused", &[("reason", "malformed")]),
        1
    );
    assert_eq!(counter(&seen, "coatcheck.save.conflicts", &[]), 1);
    for op in ["load", "create", "save", "delete_version"] {
        let key = (
            "db.client.operation.duration".to_owned(),
            vec![
                ("db.operation.name".to_owned(), op.to_owned()),
                ("db.system.name".to_owned(), "coatcheck.memory".to_owned()),
            ],
        );
        match seen.get(&key) {
            Some(Value::Histogram(v)) => assert!(!v.is_empty(), "{op}"),
            other => panic!("no duration histogram for {op}: {other:?}"),
        }
    }
    assert!(seen.keys().any(|(n, _)| n == "coatcheck.session.data.size"));
    // No label names anyone: not the user, not the session id, not a handle.
    let id = cookie.split_once('=').map(|(_, v)| v).unwrap_or_default();
    let raw_id = id
        .trim_start_matches("s%3A")
        .split('.')
        .next()
        .unwrap_or(id);
    for (name, labels) in seen.keys() {
        for (k, v) in labels {
            assert!(!v.contains(USER) && !v.contains(raw_id), "{name} {k}={v}");
            assert!(
                v.len() < 32,
                "{name} {k}={v}: a label value that long names something"
            );
        }
    }

    // A layer with metrics off records nothing (samples arrive in order: once the last
    // login of the recording layer is counted, the three before it would have been).
    let quiet = app_recording(false);
    let before = counter(&snapshot(&snapshotter), "coatcheck.sessions.logged_in", &[]);
    for _ in 0..3 {
        assert_eq!(
            Jar::default().send(&quiet, "/login").await.0,
            StatusCode::OK
        );
    }
    Jar::default().send(&app, "/login").await;
    let seen = wait_for(&snapshotter, |s| {
        counter(s, "coatcheck.sessions.logged_in", &[]) > before
    })
    .await;
    assert_eq!(
        counter(&seen, "coatcheck.sessions.logged_in", &[]),
        before + 1
    );

    // A recorder that panics: the requests do not notice, and recording resumes after.
    mode.store(1, Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(Jar::default().send(&app, "/login").await.0, StatusCode::OK);
    }
    mode.store(0, Ordering::SeqCst);
    let before = counter(&snapshot(&snapshotter), "coatcheck.sessions.logged_in", &[]);
    Jar::default().send(&app, "/login").await;
    let seen = wait_for(&snapshotter, |s| {
        counter(s, "coatcheck.sessions.logged_in", &[]) > before
    })
    .await;
    assert!(
        counter(&seen, "coatcheck.sessions.logged_in", &[]) > before,
        "recording resumed"
    );

    // A recorder that blocks forever: the queue fills, samples are dropped, requests go on.
    mode.store(2, Ordering::SeqCst);
    let started = std::time::Instant::now();
    for _ in 0..3000 {
        assert_eq!(Jar::default().send(&app, "/login").await.0, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "requests went on while the recorder blocked"
    );
}
