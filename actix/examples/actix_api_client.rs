//! An API client's session on actix-web: the token travels in `Authorization: Bearer …`
//! and comes back in `x-session-token` (no cookie), the same as the axum example.
//!
//! ```sh
//! cargo run -p coatcheck-actix --example actix_api_client
//! t=$(curl -s -D - -o /dev/null -H 'content-type: application/json' -d '{"username":"ada"}' \
//!     http://127.0.0.1:3000/login | sed -n 's/^x-session-token: //p' | tr -d '\r')
//! curl -H "authorization: Bearer $t" http://127.0.0.1:3000/me
//! ```

use actix_web::{web, App, HttpResponse, HttpServer, Responder};
use coatcheck::memory::MemoryStore;
use coatcheck::{KeyRing, Transport};
use coatcheck_actix::{Authenticated, Error, Session, SessionMiddleware};
use serde::Deserialize;

#[derive(Deserialize)]
struct Login {
    username: String,
}

async fn login(session: Session, body: web::Json<Login>) -> Result<impl Responder, Error> {
    // A real application checks the client's credentials here.
    session.login(body.username.clone()).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "user": body.username })))
}

async fn me(user: Authenticated) -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({ "user": user.user_id }))
}

async fn logout(session: Session) -> Result<impl Responder, Error> {
    session.destroy().await?;
    Ok(HttpResponse::NoContent().finish())
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys = KeyRing::new([std::env::var("SESSION_SECRET")
        .unwrap_or_else(|_| "api client example only: set SESSION_SECRET".into())])?;
    let sessions = SessionMiddleware::builder(MemoryStore::new(), keys)
        .transport(Transport::bearer())
        .build()?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    println!("API client example (actix-web) on http://127.0.0.1:{port}/");
    HttpServer::new(move || {
        App::new()
            .wrap(sessions.clone())
            .route("/login", web::post().to(login))
            .route("/me", web::get().to(me))
            .route("/logout", web::post().to(logout))
    })
    .workers(1)
    .bind(("127.0.0.1", port))?
    .run()
    .await?;
    Ok(())
}
