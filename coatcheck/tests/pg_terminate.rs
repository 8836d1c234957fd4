//! Can a Postgres statement be retried after its first attempt committed, and so run an
//! `update` closure twice?
//!
//! The store retries a write only when the server answered the statement itself with
//! "terminated" (SQLSTATE 57P01/57P02/57P03): PostgreSQL sends that only while the
//! statement runs (the transaction is then rolled back), never after its commit, when the
//! command-complete message has already gone out and a termination surfaces on the *next*
//! statement. An I/O error (outcome unknown) is never retried for a write. So no committed
//! save is sent again, and no increment is counted twice — which this test checks under a
//! storm of `pg_terminate_backend` while concurrent increments run through the middleware:
//! every acknowledged increment is stored, and the counter never exceeds the acknowledged
//! ones plus those whose outcome was unknown (a 5xx).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use coatcheck::postgres::PostgresStore;
use coatcheck::{KeyRing, Session, SessionError, SessionLayer, SessionStore};
use coatcheck_conformance::kit::TestClient;
use coatcheck_conformance::{harness, Backend};
use http::header::COOKIE;
use http::{Request, StatusCode};
use sqlx::Connection as _;

const SECRET: &str = "terminate test secret, long enough: 0123456789";

async fn incr(session: Session) -> Result<String, SessionError> {
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_never_count_an_increment_twice() {
    if !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let url = harness::url(Backend::Postgres).await.expect("checked");
    let schema = harness::unique_name("cc_term");
    let app_name = schema.clone();
    let store = PostgresStore::builder()
        .schema(&schema)
        .application_name(&app_name)
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&url)
        .expect("valid config");
    store.migrate().await.expect("migrate");
    let layer = SessionLayer::builder(store.clone(), KeyRing::new([SECRET]).expect("secret"))
        .max_save_retries(200)
        .build()
        .expect("valid config");
    let app = Router::new().route("/incr", post(incr)).layer(layer);
    let mut browser = TestClient::new(app);
    let status = browser.post("/incr").await.status;
    assert_eq!(status, 200);
    let cookie = browser.jar.header().expect("a session cookie");

    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (url, app_name, stop) = (url.clone(), app_name.clone(), stop.clone());
        tokio::spawn(async move {
            let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin");
            let mut killed = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let n: Vec<(bool,)> = sqlx::query_as(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&app_name)
                .fetch_all(&mut admin)
                .await
                .expect("terminate");
                killed += n.len() as u64;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            killed
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|_| {
            // Every increment presents the first cookie, whatever an answer sets.
            let (mut client, cookie) = (browser.other(), cookie.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..40 {
                    let req = Request::post("/incr").header(COOKIE, &cookie);
                    out.push(client.send(req, Body::empty()).await);
                }
                out
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.expect("no panic"));
    }
    stop.store(true, Ordering::SeqCst);
    let killed = killer.await.expect("killer");

    let acked: Vec<u64> = answers
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .map(|r| r.text().parse().expect("a number"))
        .collect();
    let unknown = answers.iter().filter(|r| r.status.as_u16() >= 500).count() as u64;
    let mut distinct = acked.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "two increments answered the same value"
    );
    let id = KeyRing::new([SECRET])
        .expect("secret")
        .verify_cookie_value(cookie.split_once('=').expect("pair").1)
        .expect("our cookie")
        .id;
    let stored = store
        .load(&id)
        .await
        .expect("load")
        .and_then(|r| r.data.get("n").and_then(|v| v.as_u64()))
        .unwrap_or(0);
    // +1: the request that created the session.
    let lo = acked.len() as u64 + 1;
    assert!(
        stored >= lo && stored <= lo + unknown,
        "counter {stored}: {} acknowledged (+1 creating), {unknown} with unknown outcome, {killed} connections terminated",
        acked.len()
    );
    assert!(killed > 0, "the storm terminated no connection");
    eprintln!(
        "pg_terminate: {killed} connections terminated, {} increments acknowledged, {unknown} failed, counter {stored}",
        acked.len()
    );
    let mut admin = sqlx::PgConnection::connect(&url).await.expect("admin");
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut admin)
        .await
        .expect("drop schema");
}
