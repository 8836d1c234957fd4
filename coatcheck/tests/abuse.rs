//! Input from a hostile browser: property tests on the cookie reader and through the
//! middleware, and a flood of new anonymous sessions against the bounded memory store.
//!
//! SECURITY.md points at these by name.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::memory::MemoryStore;
use coatcheck::{session_id_from_headers, KeyRing, Session, SessionError, SessionId, SessionLayer};
use coatcheck_conformance::kit::TestClient;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use proptest::prelude::*;

const SECRET: &str = "abuse test secret, long enough: 0123456789";
const OLD_SECRET: &str = "the previous secret, also long enough: 0123";

fn keys() -> KeyRing {
    KeyRing::new([SECRET, OLD_SECRET]).expect("long secrets")
}

/// Cookie header values made of any bytes `HeaderValue` accepts.
fn header_values() -> impl Strategy<Value = Vec<HeaderValue>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..4).prop_map(|values| {
        values
            .into_iter()
            .filter_map(|v| HeaderValue::from_bytes(&v).ok())
            .collect()
    })
}

/// `name=value` pairs that are not ours (never named `sid`), with values of any visible
/// ASCII but `;`.
fn junk_pairs() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-rt-z][a-z0-9_]{0,8}=[ -:<-~]{0,30}", 0..8)
}

async fn counter(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn read_only(session: Session) -> Result<String, SessionError> {
    Ok(format!("{:?}", session.get::<u64>("n").await?))
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.login("alice").await?;
    Ok("ok")
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session.user_id().await?.unwrap_or_default())
}

fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/read", get(read_only))
        .route("/count", post(counter))
        .route("/login", post(login))
        .route("/whoami", get(whoami))
        .layer(layer)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any Cookie headers: no session, or an id that parses and whose cookie verifies again.
    #[test]
    fn any_cookie_header_gives_no_session_or_a_valid_id(values in header_values()) {
        let keys = keys();
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(COOKIE, v);
        }
        if let Some(v) = session_id_from_headers(&headers, "sid", &keys) {
            prop_assert_eq!(SessionId::parse(v.id.as_str()), Ok(v.id.clone()));
            let again = keys.verify_cookie_value(&keys.sign_cookie_value(&v.id));
            prop_assert_eq!(again.map(|a| a.id), Some(v.id));
        }
    }

    /// A valid cookie is found wherever it sits among other cookies, in one header or split
    /// over several, signed by the current or the previous secret.
    #[test]
    fn a_valid_cookie_is_found_among_any_others(
        before in junk_pairs(),
        after in junk_pairs(),
        split in any::<bool>(),
        old_secret in any::<bool>(),
    ) {
        let keys = keys();
        let id = SessionId::generate();
        let signer = if old_secret { KeyRing::new([OLD_SECRET]).expect("long") } else { keys.clone() };
        let ours = format!("sid={}", signer.sign_cookie_value(&id));
        let mut headers = HeaderMap::new();
        if split {
            for pair in before.iter().chain([&ours]).chain(after.iter()) {
                headers.append(COOKIE, HeaderValue::from_str(pair).expect("visible ascii"));
            }
        } else {
            let all: Vec<&str> = before.iter().map(String::as_str).chain([ours.as_str()]).chain(after.iter().map(String::as_str)).collect();
            headers.append(COOKIE, HeaderValue::from_str(&all.join("; ")).expect("visible ascii"));
        }
        let v = session_id_from_headers(&headers, "sid", &keys);
        prop_assert_eq!(v.as_ref().map(|v| &v.id), Some(&id));
        prop_assert_eq!(v.map(|v| v.needs_resign()), Some(old_secret));
    }
}

/// Bytes of any cookie-ish content, non-ASCII (obs-text) included, that a `HeaderValue`
/// may carry: neighbours set by other apps on the same site.
fn junk_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            8 => 0x20u8..0x7f,
            2 => 0x80u8..=0xff,
            1 => Just(b';'),
            1 => Just(b'='),
        ],
        0..120,
    )
}

/// `before; sid=<ours>; after` as one header value, or `None` when the junk makes it an
/// invalid header value.
fn with_ours(before: &[u8], ours: &str, after: &[u8]) -> Option<HeaderValue> {
    let mut v = before.to_vec();
    v.extend_from_slice(b"; ");
    v.extend_from_slice(ours.as_bytes());
    v.extend_from_slice(b"; ");
    v.extend_from_slice(after);
    HeaderValue::from_bytes(&v).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A valid cookie is found among neighbours of any bytes, non-ASCII ones included (one
    /// UTF-8 cookie of another app used to hide the session: the whole header was dropped).
    #[test]
    fn a_valid_cookie_is_found_among_any_bytes(before in junk_bytes(), after in junk_bytes()) {
        let keys = keys();
        let id = SessionId::generate();
        let ours = format!("sid={}", keys.sign_cookie_value(&id));
        let Some(value) = with_ours(&before, &ours, &after) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, value);
        let v = session_id_from_headers(&headers, "sid", &keys);
        prop_assert_eq!(v.map(|v| v.id), Some(id));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Through the real middleware: a signed-in session's cookie among neighbours of any
    /// bytes is found — the request sees its user and nothing new is created.
    #[test]
    fn a_signed_in_cookie_among_any_bytes_is_found_through_the_middleware(
        before in junk_bytes(),
        after in junk_bytes(),
    ) {
        let store = MemoryStore::new();
        let app = router(SessionLayer::builder(store.clone(), keys()).build().expect("valid config"));
        let rt = runtime();
        let mut browser = TestClient::new(app);
        let res = rt.block_on(browser.post("/login"));
        let set = res.set_cookie().expect("a cookie");
        let ours = set.split(';').next().expect("a pair").to_owned();
        let Some(value) = with_ours(&before, &ours, &after) else { return Ok(()) };
        // The neighbours' bytes and ours in one Cookie header, instead of the jar's.
        let res = rt.block_on(browser.send(Request::get("/whoami").header(COOKIE, value), Body::empty()));
        prop_assert_eq!(res.status, StatusCode::OK);
        prop_assert_eq!(&res.body[..], b"alice");
        prop_assert_eq!(store.len(), 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Through the real middleware: any Cookie headers on a read-only request give a 200,
    /// no Set-Cookie and no record in the store (nothing is adopted or created for them).
    #[test]
    fn any_cookie_header_through_the_middleware_is_a_200_and_creates_nothing(values in header_values()) {
        let store = MemoryStore::new();
        let app = router(SessionLayer::builder(store.clone(), keys()).build().expect("valid config"));
        let mut req = Request::get("/read");
        for v in values {
            req = req.header(COOKIE, v);
        }
        let res = runtime().block_on(TestClient::new(app).send(req, Body::empty()));
        prop_assert_eq!(res.status, StatusCode::OK);
        prop_assert!(res.set_cookie().is_none());
        prop_assert!(store.is_empty());
    }
}

/// A million new anonymous sessions (`save_uninitialized` on, every one stored) against a
/// store of capacity 20,000: the store never holds more than its capacity, every session
/// beyond it is accounted for as an eviction, and a signed-in user who keeps using the site
/// during the flood is neither logged out nor loses an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_anonymous_sessions_stays_within_capacity_and_spares_signed_in_users() {
    const CAPACITY: usize = 20_000;
    const FLOOD: usize = 1_000_000;
    const WORKERS: usize = 4;
    let store = MemoryStore::builder().capacity(CAPACITY).build();
    let layer = SessionLayer::builder(store.clone(), keys())
        .save_uninitialized(true)
        .idle_timeout(Duration::from_secs(3600))
        .build()
        .expect("valid config");
    let app = router(layer);

    let alice = common::send(&app, "POST", "/login", None).await;
    let alice = common::set_pair(&alice).expect("a login cookie").to_owned();

    let mut flood = Vec::new();
    for _ in 0..WORKERS {
        let app = app.clone();
        flood.push(tokio::spawn(async move {
            for _ in 0..FLOOD / WORKERS {
                // A new browser each time: no cookie.
                let r = common::send(&app, "GET", "/read", None).await;
                assert_eq!(r.status, StatusCode::OK);
                assert!(
                    r.set_cookie().is_some(),
                    "save_uninitialized stores every new session"
                );
            }
        }));
    }
    // Alice keeps working while the flood runs, and the store stays within its capacity.
    let mut count = 0u64;
    while !flood.iter().all(|t| t.is_finished()) {
        let r = common::send(&app, "POST", "/count", Some(&alice)).await;
        assert_eq!(r.status, StatusCode::OK);
        count += 1;
        assert_eq!(
            r.text(),
            count.to_string(),
            "alice's counter during the flood"
        );
        assert!(store.len() <= CAPACITY, "{} records", store.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in flood {
        t.await.expect("flood task");
    }
    assert!(count > 1, "alice worked during the flood");
    assert!(store.len() <= CAPACITY);
    // Every session ever created (the flood and alice's) is either held or was evicted.
    assert_eq!(store.len() as u64 + store.evictions(), FLOOD as u64 + 1);
    let who = common::send(&app, "GET", "/whoami", Some(&alice)).await;
    assert_eq!(who.text(), "alice");
    let n = common::send(&app, "GET", "/read", Some(&alice)).await;
    assert_eq!(n.text(), format!("Some({count})"));
}
