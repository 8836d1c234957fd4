//! Middleware level: an axum handler that increments a session counter, driven in-process
//! with `tower::ServiceExt`, each simulated client with its own session cookie.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use coatcheck::{KeyRing, Secure, Session, SessionLayer, SessionStore};
use http::{header, Request, StatusCode};
use tower::ServiceExt;

use crate::store_level::{fred_pool, lean_pg_pool, unique};
use crate::{section, BoxErr, Contender, Settings, Work};

const SECRET: &str = "bench secret, at least thirty-two bytes long";

pub(crate) async fn cc_incr(session: Session) -> Result<String, coatcheck::SessionError> {
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn cc_read(session: Session) -> Result<String, coatcheck::SessionError> {
    let n: Option<u64> = session.get("n").await?;
    Ok(n.unwrap_or(0).to_string())
}

async fn ts_incr(session: tower_sessions::Session) -> Result<String, StatusCode> {
    let n: u64 = session
        .get("n")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .unwrap_or(0);
    session
        .insert("n", n + 1)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok((n + 1).to_string())
}

/// The rolling idle timeout of the mixed workload, for every contender.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

pub fn coatcheck_router(store: Arc<dyn SessionStore>) -> Result<Router, BoxErr> {
    coatcheck_router_with(store, None)
}

/// With `idle`: that rolling idle timeout (`touch_after` keeps its default, min(60 s, idle/2)).
pub fn coatcheck_router_with(
    store: Arc<dyn SessionStore>,
    idle: Option<std::time::Duration>,
) -> Result<Router, BoxErr> {
    let mut b = SessionLayer::builder_shared(store, KeyRing::new([SECRET])?).secure(Secure::Never);
    if let Some(idle) = idle {
        b = b.idle_timeout(idle);
    }
    let layer = b.build()?;
    Ok(Router::new()
        .route("/incr", post(cc_incr))
        .route("/read", get(cc_read))
        .route("/none", get(|| async { "no session" }))
        .layer(layer))
}

async fn ts_read(session: tower_sessions::Session) -> Result<String, StatusCode> {
    let n: Option<u64> = session
        .get("n")
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(n.unwrap_or(0).to_string())
}

pub(crate) fn tower_router<S: tower_sessions::SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/incr", post(ts_incr))
        .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false))
}

/// tower-sessions with a rolling idle timeout as its docs have it: `Expiry::OnInactivity`,
/// which only moves when the session is saved (tower-sessions #74), so `with_always_save(true)`:
/// every request, reads included, writes the whole session back.
pub(crate) fn tower_router_idle<S: tower_sessions::SessionStore + Clone>(store: S) -> Router {
    let idle = tower_sessions::cookie::time::Duration::seconds(IDLE.as_secs() as i64);
    Router::new()
        .route("/incr", post(ts_incr))
        .route("/read", get(ts_read))
        .layer(
            tower_sessions::SessionManagerLayer::new(store)
                .with_secure(false)
                .with_expiry(tower_sessions::Expiry::OnInactivity(idle))
                .with_always_save(true),
        )
}

/// One POST /incr per call, with client `n`'s cookie.
pub struct Http {
    pub router: Router,
    pub cookies: Vec<Option<String>>,
}

impl Http {
    pub async fn send(
        router: &Router,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
    ) -> Result<Option<String>, BoxErr> {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        let res = router.clone().oneshot(req.body(Body::empty())?).await?;
        if res.status() != StatusCode::OK {
            return Err(format!("{method} {uri}: {}", res.status()).into());
        }
        Ok(res
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned))
    }

    /// Clients each with a session (one first request each), or none for the bare handler.
    pub async fn with_clients(
        router: Router,
        clients: usize,
        sessions: bool,
    ) -> Result<Self, BoxErr> {
        let mut cookies = Vec::with_capacity(clients);
        for _ in 0..clients {
            cookies.push(if sessions {
                Some(
                    Self::send(&router, "POST", "/incr", None)
                        .await?
                        .ok_or("no cookie")?,
                )
            } else {
                None
            });
        }
        Ok(Http { router, cookies })
    }
}

#[async_trait]
impl Work for Http {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let cookie = self.cookies[n % self.cookies.len()].as_deref();
        Self::send(&self.router, "POST", "/incr", cookie).await?;
        Ok(())
    }
}

/// The mixed workload: client `n % clients`; one request in ten is `POST /incr`, the others
/// `GET /read` (the key space is ten times the clients, so both are spread over all clients).
pub struct Mixed(Http);

#[async_trait]
impl Work for Mixed {
    async fn once(&self, n: usize) -> Result<(), BoxErr> {
        let clients = self.0.cookies.len();
        let cookie = self.0.cookies[n % clients].as_deref();
        if (n / clients).is_multiple_of(10) {
            Http::send(&self.0.router, "POST", "/incr", cookie).await?;
        } else {
            Http::send(&self.0.router, "GET", "/read", cookie).await?;
        }
        Ok(())
    }
}

pub(crate) async fn mixed_pair(
    title: &str,
    coatcheck: Arc<dyn SessionStore>,
    tower: Router,
    server: Option<crate::cpu::Server>,
    clients: usize,
    s: &Settings,
) -> Result<(), BoxErr> {
    let cc =
        Http::with_clients(coatcheck_router_with(coatcheck, Some(IDLE))?, clients, true).await?;
    let ts = Http::with_clients(tower, clients, true).await?;
    let contenders = vec![
        Contender::new(format!("coatcheck, {title}"), Arc::new(Mixed(cc))).on(server.clone()),
        Contender::new(
            format!("tower-sessions (OnInactivity + always_save), {title}"),
            Arc::new(Mixed(ts)),
        )
        .reference("tower-sessions")
        .on(server),
    ];
    for c in [16, 64] {
        section(&format!("Mixed, {title}"), &contenders, c, clients * 10, s).await?;
    }
    Ok(())
}

pub async fn run(s: &Settings) -> Result<(), BoxErr> {
    println!("## Middleware level: POST /incr (a session counter), in-process\n");
    let clients = s.clients;
    let bare = Router::new().route("/incr", post(|| async { "1" }));
    let mut contenders = vec![Contender::new(
        "bare handler (no sessions)",
        Arc::new(Http::with_clients(bare, clients, false).await?),
    )];
    if s.wants("memory") {
        contenders.push(Contender::new(
            "coatcheck over MemoryStore",
            Arc::new(
                Http::with_clients(
                    coatcheck_router(Arc::new(coatcheck_memory::MemoryStore::new()))?,
                    clients,
                    true,
                )
                .await?,
            ),
        ));
        contenders.push(
            Contender::new(
                "tower-sessions over MemoryStore",
                Arc::new(
                    Http::with_clients(
                        tower_router(tower_sessions::MemoryStore::default()),
                        clients,
                        true,
                    )
                    .await?,
                ),
            )
            .reference("tower-sessions memory"),
        );
    }
    for (backend, label, url) in [
        ("redis", "Redis 7", &s.redis_url),
        ("valkey", "Valkey 8.1", &s.valkey_url),
    ] {
        let (true, Some(url)) = (s.wants(backend), url) else {
            continue;
        };
        let server = crate::cpu::Server::from_redis_url(url);
        let store = coatcheck_redis::RedisStore::builder()
            .prefix(format!("{}:", unique("benchhttp")))
            .connect(url)
            .await?;
        contenders.push(
            Contender::new(
                format!("coatcheck over {label}"),
                Arc::new(
                    Http::with_clients(coatcheck_router(Arc::new(store))?, clients, true).await?,
                ),
            )
            .on(server.clone()),
        );
        let ts = tower_sessions_redis_store::RedisStore::new(fred_pool(url).await?);
        let reference = if backend == "redis" {
            "tower-sessions redis"
        } else {
            "tower-sessions valkey"
        };
        contenders.push(
            Contender::new(
                format!("tower-sessions over {label} (fred)"),
                Arc::new(Http::with_clients(tower_router(ts), clients, true).await?),
            )
            .reference(reference)
            .on(server),
        );
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let server = Some(crate::cpu::Server::Postgres);
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(unique("benchhttp"))
            .build(lean_pg_pool(url, 16).await?)?;
        store.migrate().await?;
        contenders.push(
            Contender::new(
                "coatcheck over Postgres",
                Arc::new(
                    Http::with_clients(coatcheck_router(Arc::new(store))?, clients, true).await?,
                ),
            )
            .on(server.clone()),
        );
        let ts = tower_sessions_sqlx_store::PostgresStore::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?,
        )
        .with_schema_name(unique("benchhttp_ts"))?;
        ts.migrate().await?;
        contenders.push(
            Contender::new(
                "tower-sessions over Postgres",
                Arc::new(Http::with_clients(tower_router(ts), clients, true).await?),
            )
            .reference("tower-sessions postgres")
            .on(server),
        );
    }
    // MySQL and SQLite (their files live until the section has run).
    let (sql_contenders, _sqlite_files) = crate::sql_stores::middleware(s, clients).await?;
    contenders.extend(sql_contenders);
    for c in [16, 64] {
        section("Middleware", &contenders, c, clients, s).await?;
    }

    println!(
        "## Middleware level, a realistic mix: 9 in 10 requests GET /read, 1 in 10 POST /incr, \
         rolling idle timeout of 30 minutes\n"
    );
    println!(
        "coatcheck: `idle_timeout(30 min)` (a read writes nothing until `touch_after`, 60 s, has \
         passed since the last write or touch). tower-sessions: `Expiry::OnInactivity(30 min)` \
         with `with_always_save(true)`, as its docs and issue #74 say a rolling idle timeout \
         needs (the expiry only moves when the session is saved), so every request writes.\n"
    );
    if s.wants("memory") {
        mixed_pair(
            "MemoryStore",
            Arc::new(coatcheck_memory::MemoryStore::new()),
            tower_router_idle(tower_sessions::MemoryStore::default()),
            None,
            clients,
            s,
        )
        .await?;
    }
    for (backend, label, url) in [
        ("redis", "Redis 7", &s.redis_url),
        ("valkey", "Valkey 8.1", &s.valkey_url),
    ] {
        let (true, Some(url)) = (s.wants(backend), url) else {
            continue;
        };
        let store = coatcheck_redis::RedisStore::builder()
            .prefix(format!("{}:", unique("benchmix")))
            .connect(url)
            .await?;
        let ts = tower_sessions_redis_store::RedisStore::new(fred_pool(url).await?);
        mixed_pair(
            label,
            Arc::new(store),
            tower_router_idle(ts),
            crate::cpu::Server::from_redis_url(url),
            clients,
            s,
        )
        .await?;
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(unique("benchmix"))
            .build(lean_pg_pool(url, 16).await?)?;
        store.migrate().await?;
        let ts = tower_sessions_sqlx_store::PostgresStore::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?,
        )
        .with_schema_name(unique("benchmix_ts"))?;
        ts.migrate().await?;
        mixed_pair(
            "Postgres",
            Arc::new(store),
            tower_router_idle(ts),
            Some(crate::cpu::Server::Postgres),
            clients,
            s,
        )
        .await?;
    }
    crate::sql_stores::mixed(s, clients).await?;
    Ok(())
}
