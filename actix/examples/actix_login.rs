//! The login example on actix-web: the same store choice and the same JSON routes as the
//! axum one (`coatcheck/examples/login`), through `coatcheck-actix`. (Named `actix_login`:
//! examples of two packages with one name share one output file in the workspace's target
//! directory, and a build of one silently replaces the other's binary.)
//!
//! ```sh
//! cargo run -p coatcheck-actix --example actix_login            # the in-memory store
//! COATCHECK_STORE=redis cargo run -p coatcheck-actix --example actix_login
//! ```
//!
//! `COATCHECK_STORE` is `memory` (default), `redis`, `postgres`, `mysql`, `sqlite` or
//! `mongo` (their URLs from `REDIS_URL`, `DATABASE_URL`, `MYSQL_URL`, `SQLITE_URL`,
//! `MONGODB_URL`); `PORT` the port (3000).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer, Responder};
use coatcheck::{CsrfLayer, KeyRing, SessionStore, ROLES_KEY};
use coatcheck_actix::{
    Authenticated, CsrfMiddleware, Error, RequireRole, Session, SessionMiddleware,
};
use serde::Deserialize;

/// The application's users: name, password, roles. (A real application checks a password
/// hash from its database.)
const USERS: [(&str, &str, &[&str]); 2] =
    [("alice", "wonderland", &["admin"]), ("bob", "builder", &[])];

async fn store() -> Result<Arc<dyn SessionStore>, Box<dyn std::error::Error>> {
    let kind = std::env::var("COATCHECK_STORE").unwrap_or_else(|_| "memory".into());
    let url = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    Ok(match kind.as_str() {
        "memory" => {
            let store = coatcheck::memory::MemoryStore::new();
            store.spawn_sweeper(Duration::from_secs(60));
            Arc::new(store)
        }
        "redis" => Arc::new(
            coatcheck::redis::RedisStore::connect(&url("REDIS_URL", "redis://127.0.0.1:6379"))
                .await?,
        ),
        "postgres" => {
            let store = coatcheck::postgres::PostgresStore::builder().connect_lazy(&url(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ))?;
            store.migrate().await?;
            Arc::new(store)
        }
        "mysql" => {
            let store = coatcheck::mysql::MySqlStore::builder()
                .connect_lazy(&url("MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))?;
            store.migrate().await?;
            Arc::new(store)
        }
        "sqlite" => {
            let store = coatcheck::sqlite::SqliteStore::builder()
                .connect_lazy(&url("SQLITE_URL", "sqlite://sessions.db?mode=rwc"))?;
            store.migrate().await?;
            Arc::new(store)
        }
        "mongo" => Arc::new(
            coatcheck::mongo::MongoStore::connect(
                &url(
                    "MONGODB_URL",
                    "mongodb://127.0.0.1:27017/?directConnection=true",
                ),
                "coatcheck_example",
            )
            .await?,
        ),
        other => return Err(format!("COATCHECK_STORE={other}: not a store").into()),
    })
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// The session's CSRF token, for the page's script (or curl) to send back.
async fn csrf(session: Session) -> Result<impl Responder, Error> {
    let token = session.csrf_token().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "csrf_token": token })))
}

/// Signs in: a new session id (the old one retired), the roles stored in the same write.
async fn login(session: Session, creds: web::Json<Credentials>) -> Result<HttpResponse, Error> {
    let Some((user, _, roles)) = USERS
        .iter()
        .find(|(u, p, _)| *u == creds.username && *p == creds.password)
    else {
        return Ok(HttpResponse::Unauthorized().body("wrong username or password"));
    };
    session
        .login_with(*user, [(ROLES_KEY, roles.to_vec())])
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "user": user })))
}

async fn me(user: Authenticated) -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({ "user": user.user_id }))
}

/// The user's signed-in devices.
async fn sessions_route(user: Authenticated) -> Result<impl Responder, Error> {
    let list = user.session.list_user_sessions().await.map_err(Error)?;
    Ok(HttpResponse::Ok().json(list))
}

/// Signs the user out on every device.
async fn logout_all(user: Authenticated) -> Result<impl Responder, Error> {
    let n = user.session.logout_everywhere().await.map_err(Error)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "signed_out": n })))
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("SESSION_SECRET")
        .unwrap_or_else(|_| "login example only: set SESSION_SECRET (32+ bytes)".into());
    // The store and the middleware are built once, here: every worker clones them.
    let sessions =
        SessionMiddleware::builder_shared(store().await?, KeyRing::new([secret])?).build()?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    println!("login example (actix-web) on http://127.0.0.1:{port}/");
    HttpServer::new(move || {
        App::new()
            // The last `wrap` runs first: the session middleware, then the CSRF check.
            .wrap(CsrfMiddleware::new(CsrfLayer::new()))
            .wrap(sessions.clone())
            .route("/csrf", web::get().to(csrf))
            .route("/login", web::post().to(login))
            .route("/me", web::get().to(me))
            .route("/sessions", web::get().to(sessions_route))
            .route("/logout-all", web::post().to(logout_all))
            .service(
                web::scope("/admin")
                    .wrap(RequireRole::new("admin"))
                    .route("", web::get().to(|| async { "the admin page" })),
            )
    })
    .workers(2)
    .bind(("127.0.0.1", port))?
    .run()
    .await?;
    Ok(())
}
