//! The actix-web adapter over the engine, with actix's own test utilities: the lifecycle a
//! browser sees (a cookie jar, a double click on "Sign in", a second tab), the guards, the
//! CSRF check, the header token for API clients, and a backend that is down.

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::{test, web, App, HttpResponse, Responder};
use coatcheck::memory::MemoryStore;
use coatcheck::{CsrfLayer, KeyRing, Transport};
use coatcheck_actix::{
    Authenticated, CsrfMiddleware, Error, RequireRole, Session, SessionMiddleware,
};

const SECRET: &str = "actix adapter test secret, long enough: 0123";

fn keys() -> KeyRing {
    KeyRing::new([SECRET]).expect("long secret")
}

async fn incr(session: Session) -> Result<impl Responder, Error> {
    let n: u64 = session
        .update("n", |n: Option<u64>| n.unwrap_or(0) + 1)
        .await?;
    Ok(n.to_string())
}

async fn read(session: Session) -> Result<impl Responder, Error> {
    let n: Option<u64> = session.get("n").await?;
    Ok(format!("{n:?}"))
}

async fn login(
    session: Session,
    form: web::Form<Vec<(String, String)>>,
) -> Result<impl Responder, Error> {
    let user = form
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "ada".to_owned());
    session
        .login_with(&user, [(coatcheck::ROLES_KEY, vec!["admin"])])
        .await?;
    Ok(HttpResponse::Ok().body(format!("welcome {user}")))
}

async fn logout(session: Session) -> Result<impl Responder, Error> {
    session.destroy().await?;
    Ok("bye")
}

async fn me(user: Authenticated) -> String {
    format!("hello {}", user.user_id)
}

async fn token(session: Session) -> Result<impl Responder, Error> {
    Ok(session.csrf_token().await?)
}

macro_rules! app {
    ($sessions:expr) => {
        test::init_service(
            App::new()
                .wrap($sessions)
                .route("/incr", web::post().to(incr))
                .route("/read", web::get().to(read))
                .route("/login", web::post().to(login))
                .route("/logout", web::post().to(logout))
                .route("/me", web::get().to(me))
                .route("/token", web::get().to(token))
                .service(
                    web::scope("/admin")
                        .wrap(RequireRole::new("admin"))
                        .route("", web::get().to(|| async { "the admin page" })),
                )
                .service(
                    web::scope("/forms")
                        .wrap(CsrfMiddleware::new(CsrfLayer::new()))
                        .route(
                            "/save",
                            web::post().to(|form: web::Form<Vec<(String, String)>>| async move {
                                format!("saved {} fields", form.len())
                            }),
                        ),
                ),
        )
        .await
    };
}

fn sessions() -> SessionMiddleware {
    SessionMiddleware::builder(MemoryStore::new(), keys())
        .build()
        .expect("valid config")
}

/// The `sid=…` pair of a response's `Set-Cookie`, if any; `Some("")` when it clears.
fn set_cookie<B>(res: &ServiceResponse<B>) -> Option<String> {
    res.headers()
        .get_all(header::SET_COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sid="))
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim_start_matches("sid=")
                .to_owned()
        })
}

async fn body<B: MessageBody>(res: ServiceResponse<B>) -> String {
    String::from_utf8(test::read_body(res).await.to_vec()).expect("utf-8")
}

fn with_cookie(req: test::TestRequest, cookie: &str) -> test::TestRequest {
    req.insert_header((header::COOKIE, format!("sid={cookie}")))
}

#[actix_web::test]
async fn a_session_is_created_by_a_write_and_kept_by_the_cookie() {
    let app = app!(sessions());
    // A read without a cookie creates nothing.
    let res = test::call_service(&app, test::TestRequest::get().uri("/read").to_request()).await;
    assert_eq!(set_cookie(&res), None);
    let res = test::call_service(&app, test::TestRequest::post().uri("/incr").to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = set_cookie(&res).expect("a session cookie");
    assert_eq!(
        res.headers().get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
    assert_eq!(body(res).await, "1");
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::post().uri("/incr"), &cookie).to_request(),
    )
    .await;
    assert_eq!(body(res).await, "2");
}

/// A double click on "Sign in": two logins with the same cookie. The first rotates the id;
/// the second finds the session moved on and answers 409 without touching the cookie, so
/// the browser keeps the first's new cookie and stays signed in. A later request with the
/// old cookie (a second tab) reads no session and clears nothing.
#[actix_web::test]
async fn a_double_submitted_login_and_a_stale_tab_do_not_sign_the_user_out() {
    let app = app!(sessions());
    let res = test::call_service(&app, test::TestRequest::post().uri("/incr").to_request()).await;
    let old = set_cookie(&res).expect("cookie");
    let login = || {
        with_cookie(test::TestRequest::post().uri("/login"), &old)
            .set_form([("user", "ada")])
            .to_request()
    };
    let first = test::call_service(&app, login()).await;
    assert_eq!(first.status(), StatusCode::OK);
    let new = set_cookie(&first).expect("the rotated id");
    assert_ne!(new, old);
    let second = test::call_service(&app, login()).await;
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(
        set_cookie(&second),
        None,
        "the second click leaves the cookie alone"
    );
    let stale = test::call_service(
        &app,
        with_cookie(test::TestRequest::get().uri("/read"), &old).to_request(),
    )
    .await;
    assert_eq!(set_cookie(&stale), None, "a stale tab clears nothing");
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::get().uri("/me"), &new).to_request(),
    )
    .await;
    assert_eq!(body(res).await, "hello ada");
}

#[actix_web::test]
async fn guards_answer_401_and_403_and_destroy_clears_the_cookie() {
    let app = app!(sessions());
    let res = test::call_service(&app, test::TestRequest::get().uri("/me").to_request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = test::call_service(&app, test::TestRequest::get().uri("/admin").to_request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/login")
            .set_form([("user", "grace")])
            .to_request(),
    )
    .await;
    let cookie = set_cookie(&res).expect("cookie");
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::get().uri("/admin"), &cookie).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::post().uri("/logout"), &cookie).to_request(),
    )
    .await;
    assert_eq!(
        set_cookie(&res).as_deref(),
        Some(""),
        "destroy clears the cookie"
    );
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::get().uri("/me"), &cookie).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// A role the user lacks: 403.
#[actix_web::test]
async fn a_role_the_user_lacks_is_forbidden() {
    let app = test::init_service(
        App::new()
            .wrap(sessions())
            .route(
                "/login",
                web::post().to(|s: Session| async move {
                    s.login("bob").await.map(|_| "in").map_err(Error)
                }),
            )
            .service(
                web::scope("/admin")
                    .wrap(RequireRole::new("admin"))
                    .route("", web::get().to(|| async { "the admin page" })),
            ),
    )
    .await;
    let res = test::call_service(&app, test::TestRequest::post().uri("/login").to_request()).await;
    let cookie = set_cookie(&res).expect("cookie");
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::get().uri("/admin"), &cookie).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// The CSRF check: refused without a token or cross-site (and the refusal creates no
/// session), let through with the token in the header or in the form, whose body the
/// handler still reads.
#[actix_web::test]
async fn the_csrf_check_refuses_forgeries_and_passes_tokens() {
    let app = app!(sessions());
    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/forms/save")
            .set_form([("a", "1")])
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        set_cookie(&res),
        None,
        "a refused request creates no session"
    );
    let res = test::call_service(&app, test::TestRequest::get().uri("/token").to_request()).await;
    let cookie = set_cookie(&res).expect("cookie");
    let token = body(res).await;
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::post().uri("/forms/save"), &cookie)
            .insert_header(("sec-fetch-site", "cross-site"))
            .insert_header(("x-csrf-token", token.as_str()))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "cross-site");
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::post().uri("/forms/save"), &cookie)
            .set_form([("a", "1"), ("csrf_token", token.as_str())])
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "saved 2 fields");
    let res = test::call_service(
        &app,
        with_cookie(test::TestRequest::post().uri("/forms/save"), &cookie)
            .insert_header(("x-csrf-token", token.as_str()))
            .set_form([("a", "1")])
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

/// API clients: the token in `x-session-token`, sent back as a Bearer token, dead after
/// logout (an empty token answers it).
#[actix_web::test]
async fn the_header_token_serves_api_clients() {
    let sessions = SessionMiddleware::builder(MemoryStore::new(), keys())
        .transport(Transport::bearer())
        .build()
        .expect("config");
    let app = app!(sessions);
    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/login")
            .set_form([("user", "ada")])
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookie(&res), None, "no cookie in header mode");
    let token = res
        .headers()
        .get("x-session-token")
        .and_then(|v| v.to_str().ok())
        .expect("the token")
        .to_owned();
    let bearer = format!("Bearer {token}");
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/me")
            .insert_header((header::AUTHORIZATION, bearer.as_str()))
            .to_request(),
    )
    .await;
    assert_eq!(body(res).await, "hello ada");
    let res = test::call_service(
        &app,
        test::TestRequest::post()
            .uri("/logout")
            .insert_header((header::AUTHORIZATION, bearer.as_str()))
            .to_request(),
    )
    .await;
    assert_eq!(res.headers().get("x-session-token").unwrap(), "");
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/me")
            .insert_header((header::AUTHORIZATION, bearer.as_str()))
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// A backend that is down (a real Redis URL on a closed port): the request fails with the
/// layer's answer (500 or 503, `no-store`), never an empty session served as the user's;
/// also when the handler swallows the error and answers 200.
#[actix_web::test]
async fn a_backend_that_is_down_fails_the_request_never_serves_an_empty_session() {
    let store = coatcheck::redis::RedisStore::builder()
        .connection_timeout(Duration::from_millis(300))
        .connect_lazy("redis://127.0.0.1:1")
        .expect("valid URL");
    let sessions = SessionMiddleware::builder(store, keys())
        .store_timeout(Some(Duration::from_secs(2)))
        .build()
        .expect("config");
    let app = test::init_service(App::new().wrap(sessions).route(
        "/swallow",
        web::post().to(|s: Session| async move {
            let _ = s.insert("x", 1).await;
            "looks fine"
        }),
    ))
    .await;
    let req = test::TestRequest::post().uri("/swallow").to_request();
    let res = app.call(req).await.expect("a response");
    assert!(res.status().is_server_error(), "{}", res.status());
    assert_eq!(
        res.headers().get(header::CACHE_CONTROL).unwrap(),
        "no-store"
    );
    assert_eq!(set_cookie(&res), None);
}
