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

async fn cc_incr(session: Session) -> Result<String, coatcheck::SessionError> {
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

pub fn coatcheck_router(store: Arc<dyn SessionStore>) -> Result<Router, BoxErr> {
    let layer = SessionLayer::builder_shared(store, KeyRing::new([SECRET])?)
        .secure(Secure::Never)
        .build()?;
    Ok(Router::new()
        .route("/incr", post(cc_incr))
        .route("/read", get(cc_read))
        .route("/none", get(|| async { "no session" }))
        .layer(layer))
}

fn tower_router<S: tower_sessions::SessionStore + Clone>(store: S) -> Router {
    Router::new()
        .route("/incr", post(ts_incr))
        .layer(tower_sessions::SessionManagerLayer::new(store).with_secure(false))
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

pub async fn run(s: &Settings) -> Result<(), BoxErr> {
    println!("## Middleware level: POST /incr (a session counter), in-process\n");
    let clients = if s.quick { 100 } else { 1000 };
    let bare = Router::new().route("/incr", post(|| async { "1" }));
    let mut contenders = vec![Contender {
        name: "bare handler (no sessions)".into(),
        reference: None,
        work: Arc::new(Http::with_clients(bare, clients, false).await?),
    }];
    if s.wants("memory") {
        contenders.push(Contender {
            name: "coatcheck over MemoryStore".into(),
            reference: None,
            work: Arc::new(
                Http::with_clients(
                    coatcheck_router(Arc::new(coatcheck_memory::MemoryStore::new()))?,
                    clients,
                    true,
                )
                .await?,
            ),
        });
        contenders.push(Contender {
            name: "tower-sessions over MemoryStore".into(),
            reference: Some("tower-sessions memory"),
            work: Arc::new(
                Http::with_clients(
                    tower_router(tower_sessions::MemoryStore::default()),
                    clients,
                    true,
                )
                .await?,
            ),
        });
    }
    if let (true, Some(url)) = (s.wants("redis"), &s.redis_url) {
        let store = coatcheck_redis::RedisStore::builder()
            .prefix(format!("{}:", unique("benchhttp")))
            .connect(url)
            .await?;
        contenders.push(Contender {
            name: "coatcheck over Redis".into(),
            reference: None,
            work: Arc::new(
                Http::with_clients(coatcheck_router(Arc::new(store))?, clients, true).await?,
            ),
        });
        let ts = tower_sessions_redis_store::RedisStore::new(fred_pool(url).await?);
        contenders.push(Contender {
            name: "tower-sessions over Redis (fred)".into(),
            reference: Some("tower-sessions redis"),
            work: Arc::new(Http::with_clients(tower_router(ts), clients, true).await?),
        });
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(unique("benchhttp"))
            .build(lean_pg_pool(url, 16).await?)?;
        store.migrate().await?;
        contenders.push(Contender {
            name: "coatcheck over Postgres".into(),
            reference: None,
            work: Arc::new(
                Http::with_clients(coatcheck_router(Arc::new(store))?, clients, true).await?,
            ),
        });
        let ts = tower_sessions_sqlx_store::PostgresStore::new(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await?,
        )
        .with_schema_name(unique("benchhttp_ts"))?;
        ts.migrate().await?;
        contenders.push(Contender {
            name: "tower-sessions over Postgres".into(),
            reference: Some("tower-sessions postgres"),
            work: Arc::new(Http::with_clients(tower_router(ts), clients, true).await?),
        });
    }
    for c in [16, 64] {
        section("Middleware", &contenders, c, clients, s).await?;
    }
    Ok(())
}
