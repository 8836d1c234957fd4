//! Defect 10: a span per request names the session by a short hash of the cookie's id
//! (never the id), around the store calls and what they log. Its own test binary, with a
//! global subscriber: a thread-local one races with other tests over callsite interest.

use std::sync::{Arc, Mutex};

use axum::extract::Path;
use axum::routing::post;
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{KeyRing, Session, SessionError, SessionLayer};
use coatcheck_conformance::kit::TestClient;

const SECRET: &str = "span test secret, long enough: 0123456789ab";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.login(user).await?;
    Ok("ok")
}

#[tokio::test]
async fn each_request_has_a_span_naming_the_session_by_a_short_hash() {
    let buf = Buf::default();
    let writer = buf.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber");
    let router = Router::new().route("/login/{user}", post(login)).layer(
        SessionLayer::builder(MemoryStore::new(), KeyRing::new([SECRET]).expect("secret"))
            .build()
            .expect("valid config"),
    );
    // One browser: the second login presents the first one's cookie.
    let mut browser = TestClient::new(router);
    browser
        .post("/login/dora")
        .await
        .set_cookie()
        .expect("a cookie");
    let c = browser.jar.header().expect("the session cookie");
    browser
        .post("/login/dora")
        .await
        .set_cookie()
        .expect("a new cookie");
    let log = String::from_utf8_lossy(&buf.0.lock().expect("lock")).into_owned();
    let id = KeyRing::new([SECRET])
        .expect("secret")
        .verify_cookie_value(c.split_once('=').expect("pair").1)
        .expect("ours")
        .id;
    let short = id.short_hash().to_string();
    assert!(
        log.contains(&format!("session{{cookie=\"{short}\"}}"))
            || log.contains(&format!("session{{cookie={short}}}")),
        "no span with the short hash in:\n{log}"
    );
    assert!(log.contains("session id rotated"), "{log}");
    assert!(!log.contains(id.as_str()), "a raw session id was logged");
}
