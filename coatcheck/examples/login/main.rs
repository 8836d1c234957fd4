//! The login app from the express-session tutorials, done the axum way.
//!
//! ```text
//! cargo run --example login                                    # in-memory store
//! COATCHECK_STORE=redis    cargo run --example login --features redis     # REDIS_URL
//! COATCHECK_STORE=postgres cargo run --example login --features postgres  # DATABASE_URL
//! COATCHECK_STORE=mongo    cargo run --example login --features mongo     # MONGODB_URL
//! ```
//!
//! Routes: `POST /login` (JSON `{"username","password"}`, checked with argon2),
//! `GET /me` (401 when logged out), `POST /logout`, `POST /logout-all` (every device),
//! `GET /sessions` (this user's devices), `GET /admin` (403 without the `admin` role).
//! Users: `alice` / `wonderland` (admin), `bob` / `builder`.
//!
//! `requireAuth` is the library's `coatcheck::Authenticated` extractor; `requireRole` is its
//! `coatcheck::RequireRole` route layer; the roles are stored with the login by
//! `Session::login_with`.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use coatcheck::{
    Authenticated, KeyRing, RequireRole, Secure, Session, SessionError, SessionLayer, SessionStore,
    ROLES_KEY,
};
use serde::{Deserialize, Serialize};

/// A user as the app knows it: the password is only ever kept as an argon2 hash.
struct User {
    password_hash: String,
    roles: Vec<String>,
}

type Users = Arc<HashMap<String, User>>;

fn users() -> Result<Users, argon2::password_hash::Error> {
    let mut users = HashMap::new();
    for (name, password, roles) in [
        ("alice", "wonderland", vec!["admin", "user"]),
        ("bob", "builder", vec!["user"]),
    ] {
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)?
            .to_string();
        users.insert(
            name.to_owned(),
            User {
                password_hash: hash,
                roles: roles.into_iter().map(String::from).collect(),
            },
        );
    }
    Ok(Arc::new(users))
}

/// An error the app answers with.
enum AppError {
    Session(SessionError),
    Status(StatusCode, &'static str),
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> Self {
        AppError::Session(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Session(e) => e.into_response(),
            AppError::Status(code, msg) => (code, msg).into_response(),
        }
    }
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

async fn login(
    State(users): State<Users>,
    session: Session,
    Json(creds): Json<Credentials>,
) -> Result<&'static str, AppError> {
    let user = users.get(&creds.username);
    // Verify against a real hash even for unknown users, so timing does not tell them apart.
    let hash = user.map(|u| u.password_hash.as_str()).unwrap_or(
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4u0Nz4M4mPo+3+G1J5oXMIs6pJnYE/q30bJ5t1QWJjU",
    );
    let ok = PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(creds.password.as_bytes(), &parsed)
            .is_ok()
    });
    let Some(user) = user.filter(|_| ok) else {
        return Err(AppError::Status(
            StatusCode::UNAUTHORIZED,
            "invalid credentials",
        ));
    };
    // A new session id on every login (against fixation), the user indexed for revocation,
    // the roles stored with the new id in the same write.
    session
        .login_with(creds.username.clone(), [(ROLES_KEY, &user.roles)])
        .await?;
    Ok("logged in")
}

#[derive(Serialize)]
struct Me {
    user_id: String,
    roles: Vec<String>,
}

async fn me(user: Authenticated) -> Result<Json<Me>, AppError> {
    let roles = user.roles().await?;
    Ok(Json(Me {
        user_id: user.user_id,
        roles,
    }))
}

async fn logout(session: Session) -> Result<&'static str, AppError> {
    session.destroy().await?;
    Ok("logged out")
}

async fn logout_all(user: Authenticated) -> Result<String, AppError> {
    let n = user.session.logout_everywhere().await?;
    Ok(format!("logged out of {n} sessions"))
}

async fn sessions(user: Authenticated) -> Result<Json<Vec<coatcheck::UserSession>>, AppError> {
    Ok(Json(user.session.list_user_sessions().await?))
}

async fn admin(user: Authenticated) -> String {
    format!("Welcome to the admin area, {}", user.user_id)
}

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
        other => Err(format!(
            "COATCHECK_STORE={other}: not a store this build has (memory, or redis / postgres / \
             mongo with `--features {other}`)"
        )
        .into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,coatcheck=debug".into()),
        )
        .init();
    let secret = std::env::var("SESSION_SECRET")
        .unwrap_or_else(|_| "login example only: set SESSION_SECRET (32+ bytes)".into());
    let session_layer = SessionLayer::builder_shared(store().await?, KeyRing::new([secret])?)
        .secure(Secure::Never) // plain HTTP on localhost for the demo
        .idle_timeout(std::time::Duration::from_secs(30 * 60))
        .absolute_timeout(std::time::Duration::from_secs(12 * 3600))
        .build()?;

    let admin_routes = Router::new()
        .route("/admin", get(admin))
        .route_layer(RequireRole::new("admin"));
    let app = Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/sessions", get(sessions))
        .merge(admin_routes)
        .with_state(users().map_err(|e| e.to_string())?)
        .layer(session_layer);

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("login example on http://{addr}/");
    println!("  curl -c jar -b jar -H 'content-type: application/json' -d '{{\"username\":\"alice\",\"password\":\"wonderland\"}}' http://{addr}/login");
    println!("  curl -b jar http://{addr}/me ; curl -b jar http://{addr}/admin ; curl -b jar -X POST http://{addr}/logout-all");
    axum::serve(listener, app).await?;
    Ok(())
}
