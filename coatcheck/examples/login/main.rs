//! The login app from the express-session tutorials, done the axum way, with the pages a
//! person uses: a sign-in form and "Your devices" (every browser signed in to the account,
//! which one this is, where and when each was last active, a button to sign each out).
//!
//! ```text
//! cargo run --example login                                    # in-memory store
//! COATCHECK_STORE=redis    cargo run --example login --features redis     # REDIS_URL
//! COATCHECK_STORE=postgres cargo run --example login --features postgres  # DATABASE_URL
//! COATCHECK_STORE=mongo    cargo run --example login --features mongo     # MONGODB_URL
//! COATCHECK_STORE=mysql    cargo run --example login --features mysql     # MYSQL_URL
//! COATCHECK_STORE=sqlite   cargo run --example login --features sqlite    # SQLITE_URL (a file)
//! COATCHECK_MAX_SESSIONS=2 COATCHECK_LIMIT_POLICY=refuse cargo run --example login
//! cargo run --example login --features metrics       # and Prometheus metrics at /metrics
//! ```
//!
//! Open `http://127.0.0.1:3000/` in two browsers (or a private window) and sign in to both.
//!
//! Pages: `GET /` (the sign-in form, or a redirect to `/devices` when signed in),
//! `GET /devices` (your devices), form posts to `/login`, `/logout`, `/logout-others`
//! and `/sessions/{handle}/revoke`.
//!
//! JSON routes (every POST needs `x-csrf-token: <token>` from `GET /csrf`, which answers
//! `{"csrf_token": …}`; a new one after each login): `POST /login` (JSON
//! `{"username","password"}`, checked with argon2),
//! `GET /me` (401 when logged out), `POST /logout`, `POST /logout-all` (every device),
//! `POST /logout-others` (every device but this one), `GET /sessions` (this user's
//! devices), `POST /sessions/{handle}/revoke` (`{"revoked": bool}`), `GET /admin` (403
//! without the `admin` role). Users: `alice` / `wonderland` (admin), `bob` / `builder`.
//!
//! `COATCHECK_MAX_SESSIONS=n` caps the devices per user; `COATCHECK_LIMIT_POLICY=evict`
//! (the default with a cap) signs the least recently seen one out at a login past it,
//! `refuse` refuses the login ("too many devices signed in", 409).
//!
//! `requireAuth` is the library's `coatcheck::Authenticated` extractor; `requireRole` is its
//! `coatcheck::RequireRole` route layer; the roles are stored with the login by
//! `Session::login_with`. The router is in `app.rs`, the pages in `templates/`.
mod app;

use std::net::SocketAddr;
use std::sync::Arc;

use coatcheck::{LimitPolicy, SessionStore};

/// The store `COATCHECK_STORE` names (`memory` by default), at the URL of the usual
/// variable, or a local server's default.
async fn store() -> Result<Arc<dyn SessionStore>, Box<dyn std::error::Error>> {
    let kind = std::env::var("COATCHECK_STORE").unwrap_or_else(|_| "memory".into());
    #[allow(unused)]
    let url = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    match kind.as_str() {
        "memory" => {
            let store = coatcheck::memory::MemoryStore::new();
            store.spawn_sweeper(std::time::Duration::from_secs(60));
            Ok(Arc::new(store))
        }
        #[cfg(feature = "redis")]
        "redis" => Ok(Arc::new(
            coatcheck::redis::RedisStore::connect(&url("REDIS_URL", "redis://127.0.0.1:6379"))
                .await?,
        )),
        #[cfg(feature = "postgres")]
        "postgres" => {
            let store = coatcheck::postgres::PostgresStore::builder().connect_lazy(&url(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ))?;
            store.migrate().await?;
            store.spawn_cleanup(std::time::Duration::from_secs(300));
            Ok(Arc::new(store))
        }
        #[cfg(feature = "mongo")]
        "mongo" => Ok(Arc::new(
            coatcheck::mongo::MongoStore::connect(
                &url(
                    "MONGODB_URL",
                    "mongodb://127.0.0.1:27017/?directConnection=true",
                ),
                "coatcheck_example",
            )
            .await?,
        )),
        #[cfg(feature = "mysql")]
        "mysql" => {
            let store = coatcheck::mysql::MySqlStore::builder()
                .connect_lazy(&url("MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))?;
            store.migrate().await?;
            store.spawn_cleanup(std::time::Duration::from_secs(300));
            Ok(Arc::new(store))
        }
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            // A file: sessions (and sign-ins) survive a restart of the app.
            let store = coatcheck::sqlite::SqliteStore::builder()
                .connect_lazy(&url("SQLITE_URL", "sqlite://sessions.db?mode=rwc"))?;
            store.migrate().await?;
            store.spawn_cleanup(std::time::Duration::from_secs(300));
            Ok(Arc::new(store))
        }
        other => Err(format!(
            "COATCHECK_STORE={other}: not a store this build has (memory, or redis / postgres / \
             mongo / mysql / sqlite with `--features {other}`)"
        )
        .into()),
    }
}

/// The cap `COATCHECK_MAX_SESSIONS` and `COATCHECK_LIMIT_POLICY` ask for (none by default).
fn session_limit() -> Result<Option<(u32, LimitPolicy)>, String> {
    let Ok(max) = std::env::var("COATCHECK_MAX_SESSIONS") else {
        return Ok(None);
    };
    let max: u32 = max
        .trim()
        .parse()
        .map_err(|_| format!("COATCHECK_MAX_SESSIONS={max}: not a number"))?;
    let policy = match std::env::var("COATCHECK_LIMIT_POLICY").as_deref() {
        Err(_) | Ok("evict") => LimitPolicy::EvictLeastRecentlySeen,
        Ok("refuse") => LimitPolicy::Refuse,
        Ok(other) => return Err(format!("COATCHECK_LIMIT_POLICY={other}: evict or refuse")),
    };
    Ok(Some((max, policy)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,coatcheck=debug".into()),
        )
        .init();
    let options = app::Options {
        secret: std::env::var("SESSION_SECRET")
            .unwrap_or_else(|_| "login example only: set SESSION_SECRET (32+ bytes)".into()),
        session_limit: session_limit()?,
    };
    if let Some((max, policy)) = options.session_limit {
        println!("at most {max} devices per user ({policy:?} past it)");
    }
    let app = app::app(store().await?, options)?;
    // With `--features metrics`: the session metrics for Prometheus at `/metrics` (outside
    // the session layer: a scrape is not a visitor).
    #[cfg(feature = "metrics")]
    let app = {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        app.route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle.render())),
        )
    };

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("login example on http://{addr}/ (sign in, then see your devices)");
    // Every POST carries the session's CSRF token (a new one after each login).
    let token = format!(
        "t=$(curl -s -c jar -b jar http://{addr}/csrf | sed 's/.*\"csrf_token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!("  {token}");
    println!("  curl -c jar -b jar -H \"x-csrf-token: $t\" -H 'content-type: application/json' -d '{{\"username\":\"alice\",\"password\":\"wonderland\"}}' http://{addr}/login");
    println!("  curl -b jar http://{addr}/me ; curl -b jar http://{addr}/sessions ; curl -b jar http://{addr}/admin");
    println!("  {token} ; curl -b jar -H \"x-csrf-token: $t\" -X POST http://{addr}/logout-all");
    // With the peer address, so that each device's address is kept (`IpCapture::Full`).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
