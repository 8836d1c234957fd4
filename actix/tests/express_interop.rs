//! Sessions shared with the real Express app (`coatcheck/tests/express-app/`) through the
//! actix-web adapter: the same cross-check as the tower layer's
//! (`coatcheck/tests/express_interop.rs`, whose scenario this includes), on Redis and
//! Postgres. Needs `node` and that app's `node_modules` (`npm ci` there); without them each
//! test prints a `skipped:` line, a failure when `COATCHECK_REQUIRE_BACKENDS` names `node`.

#[path = "../../coatcheck/examples/express_shared.rs"]
#[allow(dead_code)]
mod express_shared;
#[path = "../../coatcheck/tests/interop/scenario.rs"]
mod scenario;

use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use coatcheck::SessionStore;
use coatcheck_actix::{Error, Session, SessionMiddleware};
use coatcheck_conformance::{harness, Backend};
use express_shared::Config;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct UserQuery {
    user: String,
}

#[derive(Deserialize)]
struct NoteQuery {
    text: String,
}

type Answer = Result<HttpResponse, Error>;

async fn login(session: Session, q: web::Query<UserQuery>) -> Answer {
    session.login(&q.user).await?;
    session.insert("loginSide", "rust").await?;
    Ok(HttpResponse::Ok().json(json!({ "userId": q.user })))
}

async fn me(session: Session) -> Answer {
    let Some(user) = session.user_id().await? else {
        return Ok(HttpResponse::Unauthorized().json(json!({"error": "not logged in"})));
    };
    Ok(HttpResponse::Ok().json(json!({
        "userId": user,
        "counter": session.get_value("counter").await?,
        "note": session.get_value("note").await?,
        "loginSide": session.get_value("loginSide").await?,
    })))
}

async fn counter(session: Session) -> Answer {
    let n: u64 = session
        .update("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "counter": n })))
}

async fn note(session: Session, q: web::Query<NoteQuery>) -> Answer {
    session.insert("note", &q.text).await?;
    Ok(HttpResponse::Ok().json(json!({ "note": q.text })))
}

async fn whole(session: Session) -> Answer {
    let id = session.id().await?.map(|id| id.as_str().to_owned());
    let mut data = serde_json::Map::new();
    for key in ["userId", "loginSide", "counter", "note"] {
        if let Some(v) = session.get_value(key).await? {
            data.insert(key.into(), v);
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "id": id, "data": data })))
}

async fn logout(session: Session) -> Answer {
    session.destroy().await?;
    Ok(HttpResponse::Ok().json(json!({ "ok": true })))
}

/// The Rust side on actix-web: the example's routes, its options, on a loopback port, served
/// by an actix system on a thread of its own for the rest of the test.
async fn serve_actix(
    store: Arc<dyn SessionStore>,
    mut config: Config,
    secrets: Vec<String>,
) -> String {
    config.secrets = secrets;
    let sessions: SessionMiddleware = express_shared::options(store, &config).expect("options");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(sessions.clone())
                    .route("/login", web::post().to(login))
                    .route("/me", web::get().to(me))
                    .route("/counter", web::post().to(counter))
                    .route("/note", web::post().to(note))
                    .route("/session", web::get().to(whole))
                    .route("/logout", web::post().to(logout))
            })
            .workers(1)
            .bind(("127.0.0.1", 0))
            .expect("bind");
            let port = server.addrs()[0].port();
            let _ = tx.send(port);
            let _ = server.run().await;
        });
    });
    let port = rx.recv().expect("the actix server's port");
    format!("http://127.0.0.1:{port}")
}

fn base_config(store: &str) -> Config {
    let mut c = Config::from_env();
    c.store = store.to_owned();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_redis_through_actix() {
    if !scenario::have_node() || !harness::require(Some(Backend::Redis)).await {
        return;
    }
    let mut config = base_config("redis");
    config.redis_url = harness::url(Backend::Redis).await.expect("url");
    config.redis_prefix = format!("{}:", harness::unique_name("interop-actix"));
    scenario::run(config, serve_actix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_interop_postgres_through_actix() {
    if !scenario::have_node() || !harness::require(Some(Backend::Postgres)).await {
        return;
    }
    let mut config = base_config("postgres");
    config.database_url = harness::url(Backend::Postgres).await.expect("url");
    config.pg_table = harness::unique_name("interop_actix").replace('-', "_");
    let table = config.pg_table.clone();
    let url = config.database_url.clone();
    scenario::run(config, serve_actix).await;
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await
        .expect("drop the test table");
}
