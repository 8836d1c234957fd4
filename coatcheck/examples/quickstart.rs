//! The views counter from the express-session tutorials, on the in-memory store.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Then, in another terminal, the two commands it prints.
use std::net::SocketAddr;

use axum::{routing::get, Router};
use coatcheck::memory::MemoryStore;
use coatcheck::{KeyRing, Secure, Session, SessionError, SessionLayer};

async fn views(session: Session) -> Result<String, SessionError> {
    // `update` is safe under concurrent requests: it re-runs on the fresh value if another
    // request saved this session first.
    let views: u64 = session
        .update("views", |v: Option<u64>| v.unwrap_or(0) + 1)
        .await?;
    Ok(if views == 1 {
        "Welcome! Refresh to count your views.\n".to_owned()
    } else {
        format!("You have viewed this page {views} times.\n")
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,coatcheck=debug".into()),
        )
        .init();

    // In production the secret comes from the environment, at least 32 bytes, and you keep
    // old ones after the new one to rotate: KeyRing::new([new, old]).
    let secret = std::env::var("SESSION_SECRET")
        .unwrap_or_else(|_| "quickstart-only secret, set SESSION_SECRET in production".into());
    let keys = KeyRing::new([secret])?;

    let store = MemoryStore::new();
    let _sweeper = store.spawn_sweeper(std::time::Duration::from_secs(60));
    let sessions = SessionLayer::builder(store, keys)
        // Plain HTTP on localhost for this demo; the default is Secure cookies.
        .secure(Secure::Never)
        .build()?;

    let app = Router::new().route("/", get(views)).layer(sessions);

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("coatcheck quickstart listening on http://{addr}/");
    println!("Try it (the cookie jar keeps your session):");
    println!("  curl -c /tmp/coatcheck.jar -b /tmp/coatcheck.jar http://{addr}/");
    println!("  curl -c /tmp/coatcheck.jar -b /tmp/coatcheck.jar http://{addr}/");
    axum::serve(listener, app).await?;
    Ok(())
}
