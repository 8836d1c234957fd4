//! A Rust app sharing sessions with an Express app: same `connect.sid` cookie, same secret
//! list, same store (connect-redis, connect-pg-simple, connect-mongo, express-mysql-session or
//! better-sqlite3-session-store layout).
//!
//! Run it next to the Node app in `coatcheck/tests/express-app/` (same environment):
//!
//! ```text
//! STORE=redis REDIS_URL=redis://127.0.0.1:6379 SESSION_SECRETS='new secret,old secret' PORT=3001 \
//!     cargo run --example express_shared --features redis,postgres,mongo,mysql,sqlite
//! ```
//!
//! `STORE` is `redis` (`REDIS_URL`, `REDIS_PREFIX`), `postgres` (`DATABASE_URL`, `PG_TABLE`),
//! `mongo` (`MONGODB_URL`, `MONGO_DB`, `MONGO_COLLECTION`), `mysql` (`MYSQL_URL`,
//! `MYSQL_TABLE`) or `sqlite` (`SQLITE_FILE`); defaults match the Node
//! packages' defaults. Routes (the Node app has the same ones): `POST /login?user=`,
//! `GET /me`, `POST /counter`, `POST /note?text=`, `GET /session`, `POST /logout`.
//!
//! What to know: concurrency with Node is last-write-wins (Node takes no locks); keys
//! express-session reserves (`cookie`, `id`, `save`, ...) are refused; Express keeps no
//! creation time, so there is no absolute timeout; with connect-redis and connect-mongo there
//! is no per-user index, so "log out everywhere" needs the Postgres, MySQL or SQLite store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coatcheck::{
    ExpressFormat, KeyRing, SameSite, Secure, Session, SessionError, SessionLayer, SessionStore,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Where the shared sessions live and how they are signed.
#[derive(Debug, Clone)]
pub struct Config {
    /// `redis`, `postgres`, `mongo`, `mysql` or `sqlite`.
    pub store: String,
    /// The Node app's secret list: the first signs, all verify.
    pub secrets: Vec<String>,
    /// Redis URL and key prefix (connect-redis's default `sess:`).
    pub redis_url: String,
    pub redis_prefix: String,
    /// Postgres URL and table (connect-pg-simple's default `session`).
    pub database_url: String,
    pub pg_table: String,
    /// MongoDB URL, database and collection (connect-mongo's default `sessions`).
    pub mongodb_url: String,
    pub mongo_db: String,
    pub mongo_collection: String,
    /// MySQL URL and table (express-mysql-session's default `sessions`).
    pub mysql_url: String,
    pub mysql_table: String,
    /// The SQLite file (better-sqlite3-session-store's table is always `sessions`).
    pub sqlite_file: String,
}

impl Config {
    /// From the environment, with the Node packages' defaults.
    pub fn from_env() -> Config {
        let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
        Config {
            store: var("STORE", "redis"),
            secrets: var("SESSION_SECRETS", "keyboard cat")
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            redis_url: var("REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: var("REDIS_PREFIX", "sess:"),
            database_url: var("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            pg_table: var("PG_TABLE", "session"),
            mongodb_url: var(
                "MONGODB_URL",
                "mongodb://127.0.0.1:27017/?directConnection=true",
            ),
            mongo_db: var("MONGO_DB", "coatcheck_interop"),
            mongo_collection: var("MONGO_COLLECTION", "sessions"),
            mysql_url: var("MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
            mysql_table: var("MYSQL_TABLE", "sessions"),
            sqlite_file: var("SQLITE_FILE", "sessions.db"),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The store in express-compatible mode. Postgres, MySQL and SQLite: the table is created
/// as connect-pg-simple, express-mysql-session and better-sqlite3-session-store create it,
/// if absent.
pub async fn store(config: &Config) -> Result<Arc<dyn SessionStore>, BoxError> {
    // The stored `cookie` object is what Express re-sends: match the Node app's options
    // (`secure: false` here: plain HTTP on loopback; keep the default `true` in production).
    let format = ExpressFormat::new().secure(false);
    Ok(match config.store.as_str() {
        "redis" => Arc::new(
            coatcheck::redis::RedisStore::builder()
                .prefix(&config.redis_prefix)
                .express(format)
                .connect(&config.redis_url)
                .await?,
        ),
        "postgres" => {
            let store = coatcheck::postgres::PostgresStore::builder()
                .table(&config.pg_table)
                .express(format)
                .connect_lazy(&config.database_url)?;
            store.migrate().await?;
            Arc::new(store)
        }
        "mongo" => {
            use coatcheck::mongo::{mongodb::options::ClientOptions, MongoStore};
            let options = ClientOptions::parse(&config.mongodb_url).await?;
            let client = MongoStore::client_with_defaults(options)?;
            Arc::new(
                MongoStore::builder(&client, &config.mongo_db)
                    .collection(&config.mongo_collection)
                    .express(format)
                    .build_with_indexes()
                    .await?,
            )
        }
        "mysql" => {
            let store = coatcheck::mysql::MySqlStore::builder()
                .table(&config.mysql_table)
                .express(format)
                .connect_lazy(&config.mysql_url)?;
            store.migrate().await?;
            Arc::new(store)
        }
        "sqlite" => {
            let store = coatcheck::sqlite::SqliteStore::builder()
                .express(format)
                .connect_lazy(&format!("sqlite://{}?mode=rwc", config.sqlite_file))?;
            store.migrate().await?;
            Arc::new(store)
        }
        other => {
            return Err(format!(
                "STORE must be redis, postgres, mongo, mysql or sqlite, not {other:?}"
            )
            .into())
        }
    })
}

/// The session layer matching the Node app's `express-session` options.
pub fn layer(store: Arc<dyn SessionStore>, config: &Config) -> Result<SessionLayer, BoxError> {
    options(store, config)
}

/// The Node app's `express-session` options, for the tower layer or another framework's
/// middleware (`coatcheck-actix`'s, in its interop test).
pub fn options<T: From<coatcheck::engine::Engine>>(
    store: Arc<dyn SessionStore>,
    config: &Config,
) -> Result<T, BoxError> {
    // Node apps often have short secrets: accepted here on purpose (they are the Node app's).
    let keys = KeyRing::new_allowing_weak(config.secrets.iter().map(String::as_str))?;
    Ok(
        coatcheck::SessionLayerBuilder::<T>::for_product(store, keys)
            .express_compatible()
            .secure(Secure::Never) // the Node app says `secure: false` (plain HTTP on loopback)
            .same_site(SameSite::Lax)
            .idle_timeout(Duration::from_secs(3600)) // cookie.maxAge: 3600000
            .build()?,
    )
}

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

#[derive(Deserialize)]
struct NoteQuery {
    text: String,
}

async fn login(session: Session, Query(q): Query<UserQuery>) -> Result<Json<Value>, SessionError> {
    session.login(&q.user).await?; // new id (fixation), principal stored as `userId`
    session.insert("loginSide", "rust").await?;
    Ok(Json(json!({ "userId": q.user })))
}

async fn me(session: Session) -> Result<Response, SessionError> {
    let Some(user) = session.user_id().await? else {
        return Ok((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "not logged in"})),
        )
            .into_response());
    };
    Ok(Json(json!({
        "userId": user,
        "counter": session.get_value("counter").await?,
        "note": session.get_value("note").await?,
        "loginSide": session.get_value("loginSide").await?,
    }))
    .into_response())
}

async fn counter(session: Session) -> Result<Json<Value>, SessionError> {
    let n: u64 = session
        .update("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(Json(json!({ "counter": n })))
}

async fn note(session: Session, Query(q): Query<NoteQuery>) -> Result<Json<Value>, SessionError> {
    session.insert("note", &q.text).await?;
    Ok(Json(json!({ "note": q.text })))
}

async fn whole(session: Session) -> Result<Json<Value>, SessionError> {
    let id = session.id().await?.map(|id| id.as_str().to_owned());
    let mut data = serde_json::Map::new();
    for key in ["userId", "loginSide", "counter", "note"] {
        if let Some(v) = session.get_value(key).await? {
            data.insert(key.into(), v);
        }
    }
    Ok(Json(json!({ "id": id, "data": data })))
}

async fn logout(session: Session) -> Result<Json<Value>, SessionError> {
    session.destroy().await?;
    Ok(Json(json!({ "ok": true })))
}

/// The routes, the same as the Node app's.
pub fn router(layer: SessionLayer) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/counter", post(counter))
        .route("/note", post(note))
        .route("/session", get(whole))
        .route("/logout", post(logout))
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,coatcheck=debug".into()),
        )
        .init();
    let config = Config::from_env();
    let store = store(&config).await?;
    let app = router(layer(store, &config)?);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening {}", listener.local_addr()?.port());
    axum::serve(listener, app).await?;
    Ok(())
}
