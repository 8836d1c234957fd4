//! Lifecycle events: each fires when it should, names devices by handle, and a subscriber
//! that blocks or panics changes nothing for the request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{
    KeyRing, RevokeScope, Secure, Session, SessionError, SessionEvent, SessionLayer,
    SessionLayerBuilder,
};
use coatcheck_conformance::kit::TestClient;
use http::StatusCode;

const SECRET: &str = "events test secret, long enough: 0123456789";

async fn put(session: Session) -> Result<&'static str, SessionError> {
    session.insert("k", 1).await?;
    Ok("ok")
}
async fn login(session: Session, Path(u): Path<String>) -> Result<&'static str, SessionError> {
    session.login(u).await?;
    Ok("ok")
}
async fn destroy(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("ok")
}
async fn everywhere(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_everywhere().await?.to_string())
}
async fn others(session: Session) -> Result<String, SessionError> {
    Ok(session.logout_other_devices().await?.to_string())
}
async fn revoke_first_other(session: Session) -> Result<String, SessionError> {
    let list = session.list_user_sessions().await?;
    let other = list
        .iter()
        .find(|s| !s.current)
        .and_then(|s| s.handle.clone());
    Ok(match other {
        Some(h) => session.revoke_device(h.as_str()).await?.to_string(),
        None => "none".into(),
    })
}
async fn read(session: Session) -> Result<String, SessionError> {
    Ok(session.user_id().await?.unwrap_or_default())
}

fn app(f: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder) -> (Router, SessionLayer) {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = f(SessionLayer::builder(MemoryStore::new(), keys).secure(Secure::Never))
        .build()
        .expect("valid config");
    let router = Router::new()
        .route("/put", post(put))
        .route("/login/{u}", post(login))
        .route("/destroy", post(destroy))
        .route("/everywhere", post(everywhere))
        .route("/others", post(others))
        .route("/revoke", post(revoke_first_other))
        .route("/read", post(read))
        .layer(layer.clone());
    (router, layer)
}

type Log = Arc<Mutex<Vec<SessionEvent>>>;

fn recorder() -> (Log, impl Fn(SessionEvent) + Send + Sync + 'static) {
    let log: Log = Arc::default();
    let sink = log.clone();
    (log, move |e| sink.lock().expect("lock").push(e))
}

/// Waits (events are delivered off the request path) until `n` events are in.
async fn events(log: &Log, n: usize) -> Vec<SessionEvent> {
    let started = Instant::now();
    loop {
        let got = log.lock().expect("lock").clone();
        if got.len() >= n || started.elapsed() > Duration::from_secs(5) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn drain(log: &Log, n: usize) -> Vec<SessionEvent> {
    let got = events(log, n).await;
    log.lock().expect("lock").clear();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_fires_when_it_should() {
    let (log, sink) = recorder();
    let (app, _) = app(|b| b.on_event(sink));
    let mut a = TestClient::new(app);
    a.post("/put").await;
    assert_eq!(drain(&log, 1).await, [SessionEvent::Created]);

    a.post("/login/ada").await;
    let got = drain(&log, 1).await;
    let SessionEvent::LoggedIn {
        user,
        old_handle,
        new_handle,
    } = &got[0]
    else {
        panic!("{got:?}")
    };
    assert_eq!((user.as_str(), old_handle), ("ada", &None));
    let a_handle = new_handle.clone().expect("a handle");

    // A first-request login: created, then logged in.
    let mut b = a.other();
    b.post("/login/ada").await;
    let got = drain(&log, 2).await;
    assert!(got.contains(&SessionEvent::Created), "{got:?}");
    assert!(
        got.iter()
            .any(|e| matches!(e, SessionEvent::LoggedIn { user, .. } if user == "ada")),
        "{got:?}"
    );

    assert_eq!(b.post("/revoke").await.text(), "true");
    assert_eq!(
        drain(&log, 1).await,
        [SessionEvent::Revoked {
            user: "ada".into(),
            scope: RevokeScope::Device(a_handle),
            count: 1
        }]
    );
    // a's cookie now names a revoked session.
    a.post("/read").await;
    assert_eq!(drain(&log, 1).await, [SessionEvent::NotFoundOnRead]);

    let mut c = a.other();
    c.post("/login/ada").await;
    drain(&log, 2).await;
    assert_eq!(b.post("/others").await.text(), "1");
    let got = drain(&log, 1).await;
    assert!(
        matches!(
            &got[..],
            [SessionEvent::Revoked {
                scope: RevokeScope::OtherDevices,
                count: 1,
                ..
            }]
        ),
        "{got:?}"
    );
    assert_eq!(b.post("/everywhere").await.text(), "1");
    let got = drain(&log, 1).await;
    assert!(
        matches!(
            &got[..],
            [SessionEvent::Revoked {
                scope: RevokeScope::Everywhere,
                count: 1,
                ..
            }]
        ),
        "{got:?}"
    );

    let mut d = a.other();
    d.post("/put").await;
    drain(&log, 1).await;
    d.post("/destroy").await;
    assert_eq!(
        drain(&log, 1).await,
        [SessionEvent::Destroyed {
            user: None,
            handle: None
        }]
    );
    // Nothing more was sent.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(log.lock().expect("lock").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_or_panicking_subscriber_changes_nothing_for_the_request() {
    let (app_blocking, _) = app(|b| b.on_event(|_| std::thread::sleep(Duration::from_secs(2))));
    let (app_panic, _) = app(|b| b.on_event(|_| panic!("a subscriber bug")));
    for app in [&app_blocking, &app_panic] {
        for _ in 0..6 {
            let started = Instant::now();
            let status = TestClient::new(app.clone()).post("/put").await.status;
            assert_eq!(status, StatusCode::OK);
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "a request waited"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_never_blocks() {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = SessionLayer::builder(MemoryStore::new(), keys)
        .secure(Secure::Never)
        .on_event(|_| std::thread::sleep(Duration::from_secs(2)))
        .event_queue(2)
        .build()
        .expect("valid config");
    let app = Router::new().route("/put", post(put)).layer(layer.clone());
    for _ in 0..10 {
        assert_eq!(
            TestClient::new(app.clone()).post("/put").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        layer.events_dropped(),
        8,
        "2 in the queue, the rest dropped"
    );
}

/// A save that keeps losing to concurrent saves: the request fails with `503` and the
/// event says how many attempts were made. The concurrent save is the handler's own, made
/// straight through the store between reading the session and its end-of-request save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_exhausted_fires_when_the_retries_run_out() {
    use coatcheck::SessionStore as _;
    let (log, sink) = recorder();
    let store = MemoryStore::new();
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let layer = SessionLayer::builder(store.clone(), keys)
        .secure(Secure::Never)
        .max_save_retries(0)
        .on_event(sink)
        .build()
        .expect("valid config");
    let race = move |session: Session| {
        let store = store.clone();
        async move {
            session.insert("k", 2).await?;
            let id = session.id().await?.expect("an existing session");
            let mut theirs = store.load(&id).await.expect("load").expect("stored");
            theirs.data.insert("theirs".into(), true.into());
            store.save(&theirs).await.expect("their save");
            Ok::<_, SessionError>("ok")
        }
    };
    let app = Router::new()
        .route("/put", post(put))
        .route("/race", post(race))
        .layer(layer);
    let mut browser = TestClient::new(app);
    browser.post("/put").await;
    assert_eq!(drain(&log, 1).await, [SessionEvent::Created]);
    let status = browser.post("/race").await.status;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        drain(&log, 1).await,
        [SessionEvent::ConflictsExhausted { attempts: 1 }]
    );
}

/// A subscriber that blocks for good must not take tokio's blocking pool from the
/// application: with events delivered on `spawn_blocking` (and a queue larger than the
/// pool), the application's own `spawn_blocking` waited behind them (found by a review).
/// The runtime here has 8 blocking threads, the queue 64: 40 blocked events used to fill it.
#[test]
fn a_blocked_subscriber_leaves_the_blocking_pool_to_the_application() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = open.clone();
        let keys = KeyRing::new([SECRET]).expect("long secret");
        let layer = SessionLayer::builder(MemoryStore::new(), keys)
            .secure(Secure::Never)
            .on_event(move |_| {
                while !waiting.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
            .event_queue(64)
            .build()
            .expect("valid config");
        let app = Router::new().route("/put", post(put)).layer(layer.clone());
        for _ in 0..40 {
            assert_eq!(
                TestClient::new(app.clone()).post("/put").await.status,
                StatusCode::OK
            );
        }
        let answered =
            tokio::time::timeout(Duration::from_secs(2), tokio::task::spawn_blocking(|| 42)).await;
        assert!(
            matches!(answered, Ok(Ok(42))),
            "the application's spawn_blocking waited behind blocked event deliveries"
        );
        open.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}

/// The subscriber runs inside the application's runtime: it may spawn a task (closing a
/// revoked session's WebSockets, say). A subscriber that panics loses its event, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_may_spawn_tasks_and_a_panic_is_counted() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (app, layer) = app(move |b| {
        b.on_event(move |e| {
            if e == SessionEvent::Created {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
            } else {
                panic!("a subscriber bug");
            }
        })
    });
    assert_eq!(
        TestClient::new(app.clone()).post("/put").await.status,
        StatusCode::OK
    );
    let spawned = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(matches!(spawned, Ok(Some(()))), "the subscriber's task ran");
    let mut browser = TestClient::new(app);
    assert_eq!(browser.post("/put").await.status, StatusCode::OK);
    assert_eq!(browser.post("/destroy").await.status, StatusCode::OK);
    for _ in 0..100 {
        if layer.events_dropped() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        layer.events_dropped(),
        1,
        "the Destroyed event the subscriber lost"
    );
}
