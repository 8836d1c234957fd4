//! The login example's router: JSON routes for `curl`, and server-rendered pages (a sign-in
//! form and "Your devices") for a browser. `main.rs` picks the store and serves it;
//! `tests/browser.rs` includes this file with `#[path]` and drives the pages in Chromium.
//!
//! CSRF: every state-changing route is a POST behind `coatcheck::CsrfLayer`. Every form
//! carries the session's token (masked afresh on each page, `Session::csrf_token`); a JSON
//! client asks `GET /csrf` for one and sends it in `x-csrf-token`. Before the token, the
//! layer refuses what the browser marks cross-site (`Sec-Fetch-Site`) and, without that
//! header, an `Origin` of another host. The session cookie is `SameSite=Lax` too (the
//! layer's default), so a forged form on another site also arrives logged out.
//!
//! Messages after an action ("Signed out 1 device.") are flash messages: shown once, on
//! the page the redirect leads to.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use coatcheck::{
    Authenticated, CsrfLayer, FlashLevel, KeyRing, LimitPolicy, RequireRole, Secure, Session,
    SessionError, SessionLayer, SessionStore, Timestamp, UserSession, ROLES_KEY,
};
use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

/// What the app is configured with besides its store.
#[derive(Clone, Debug)]
pub struct Options {
    /// The cookie signing secret (32 bytes or more).
    pub secret: String,
    /// At most this many signed-in devices per user, and what a login past it does; `None`
    /// for no cap.
    pub session_limit: Option<(u32, LimitPolicy)>,
}

/// The message the sign-in form shows when the cap refuses a login.
pub const TOO_MANY_DEVICES: &str =
    "You have too many devices signed in. Sign out on one of them first.";

/// The app on `store`: serve it with `into_make_service_with_connect_info::<SocketAddr>()`
/// so the devices page can show each device's address.
pub fn app(
    store: Arc<dyn SessionStore>,
    options: Options,
) -> Result<Router, Box<dyn std::error::Error>> {
    let mut layer = SessionLayer::builder_shared(store, KeyRing::new([options.secret])?)
        .secure(Secure::Never) // plain HTTP on localhost for the demo
        // Unticked "Remember me": the cookie ends with the browser, 30 minutes idle, 12
        // hours at most. Ticked: a cookie for 30 days of inactivity, 90 days at most.
        .browser_session(true)
        .idle_timeout(Duration::from_secs(30 * 60))
        .absolute_timeout(Duration::from_secs(12 * 3600))
        .remember_me(
            Duration::from_secs(30 * 86_400),
            Some(Duration::from_secs(90 * 86_400)),
        );
    if let Some((max, policy)) = options.session_limit {
        layer = layer.max_sessions_per_user(max, policy);
    }
    let state = AppState {
        users: users().map_err(|e| e.to_string())?,
        pages: Arc::new(pages()?),
    };
    let admin_routes = Router::new()
        .route("/admin", get(admin))
        .route_layer(RequireRole::new("admin"));
    Ok(Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/logout-all", post(logout_all))
        .route("/logout-others", post(logout_others))
        .route("/sessions", get(sessions))
        .route("/sessions/{handle}/revoke", post(revoke))
        .route("/devices", get(devices))
        .route("/csrf", get(csrf))
        .merge(admin_routes)
        .with_state(state)
        .layer(CsrfLayer::new())
        .layer(layer.build()?))
}

#[derive(Clone)]
struct AppState {
    users: Users,
    pages: Arc<Environment<'static>>,
}

/// The templates, embedded in the binary. A `.html` name turns HTML autoescaping on, so a
/// user agent string (which the client chooses) is shown as text, never as markup.
fn pages() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    env.add_template("base.html", include_str!("templates/base.html"))?;
    env.add_template("login.html", include_str!("templates/login.html"))?;
    env.add_template("devices.html", include_str!("templates/devices.html"))?;
    Ok(env)
}

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
    Page(minijinja::Error),
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> Self {
        AppError::Session(e)
    }
}

impl From<minijinja::Error> for AppError {
    fn from(e: minijinja::Error) -> Self {
        AppError::Page(e)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::Session(e) => e.into_response(),
            AppError::Status(code, msg) => (code, msg).into_response(),
            AppError::Page(e) => {
                tracing::error!(error = %e, "template failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "page failed").into_response()
            }
        }
    }
}

fn render(state: &AppState, name: &str, ctx: minijinja::Value) -> Result<Html<String>, AppError> {
    Ok(Html(state.pages.get_template(name)?.render(ctx)?))
}

/// Whether the request is an HTML form post (answered with pages and redirects) rather
/// than an API call (answered with JSON or text).
fn is_form(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accepts_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    content_type.starts_with("application/x-www-form-urlencoded") && !accepts_json
}

/// `GET /csrf`: a CSRF token for a JSON client, to send in `x-csrf-token` with its posts
/// (a new one after each login).
async fn csrf(session: Session) -> Result<Json<serde_json::Value>, AppError> {
    Ok(Json(
        serde_json::json!({ "csrf_token": session.csrf_token().await? }),
    ))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
    /// The "Remember me" checkbox: `on` from the form, `true` from JSON; absent is no.
    #[serde(default)]
    remember: Option<Checkbox>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Checkbox {
    Bool(bool),
    Text(String),
}

impl Credentials {
    fn remember(&self) -> bool {
        match &self.remember {
            Some(Checkbox::Bool(b)) => *b,
            Some(Checkbox::Text(t)) => t == "on" || t == "true",
            None => false,
        }
    }
}

/// The user whose password this is, checked with argon2.
fn check(users: &Users, creds: &Credentials) -> Option<Vec<String>> {
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
    user.filter(|_| ok).map(|u| u.roles.clone())
}

async fn index(State(state): State<AppState>, session: Session) -> Result<Response, AppError> {
    if session.user_id().await?.is_some() {
        return Ok(Redirect::to("/devices").into_response());
    }
    let csrf = session.csrf_token().await?;
    Ok(render(&state, "login.html", context! { csrf })?.into_response())
}

/// `POST /login`: JSON `{"username","password"}` (answers text) or the sign-in form
/// (answers a redirect to the devices page, or the form again with what went wrong).
async fn login(
    State(state): State<AppState>,
    session: Session,
    req: Request,
) -> Result<Response, AppError> {
    let form = is_form(req.headers());
    let creds = if form {
        match Form::<Credentials>::from_request(req, &()).await {
            Ok(Form(creds)) => creds,
            Err(rejection) => return Ok(rejection.into_response()),
        }
    } else {
        match Json::<Credentials>::from_request(req, &()).await {
            Ok(Json(creds)) => creds,
            Err(rejection) => return Ok(rejection.into_response()),
        }
    };
    let form_again =
        |status: StatusCode, error: &str, csrf: String| -> Result<Response, AppError> {
            let page = render(
                &state,
                "login.html",
                context! { error, username => &creds.username, csrf },
            )?;
            Ok((status, page).into_response())
        };
    let Some(roles) = check(&state.users, &creds) else {
        return if form {
            let csrf = session.csrf_token().await?;
            form_again(
                StatusCode::UNAUTHORIZED,
                "Wrong username or password.",
                csrf,
            )
        } else {
            Err(AppError::Status(
                StatusCode::UNAUTHORIZED,
                "invalid credentials",
            ))
        };
    };
    // A new session id on every login (against fixation), the user indexed for revocation,
    // the roles stored with the new id in the same write.
    // A login refused by the session limit leaves the session as it was (roles included).
    let outcome = session
        .login_with(&creds.username, [(ROLES_KEY, &roles)])
        .await;
    // After the login: a refused login must not change the session already signed in here.
    if outcome.is_ok() {
        session.remember_me(creds.remember()).await?;
    }
    match outcome {
        Ok(()) if form => Ok(Redirect::to("/devices").into_response()),
        Ok(()) => Ok("logged in".into_response()),
        Err(SessionError::SessionLimit) if form => {
            let csrf = session.csrf_token().await?;
            form_again(StatusCode::CONFLICT, TOO_MANY_DEVICES, csrf)
        }
        Err(e) => Err(e.into()),
    }
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

async fn logout(session: Session, headers: HeaderMap) -> Result<Response, AppError> {
    session.destroy().await?;
    Ok(if is_form(&headers) {
        Redirect::to("/").into_response()
    } else {
        "logged out".into_response()
    })
}

async fn logout_all(user: Authenticated, headers: HeaderMap) -> Result<Response, AppError> {
    let n = user.session.logout_everywhere().await?;
    Ok(if is_form(&headers) {
        Redirect::to("/").into_response()
    } else {
        format!("logged out of {n} sessions").into_response()
    })
}

/// `POST /logout-others`: every session of this user but this one.
async fn logout_others(user: Authenticated, headers: HeaderMap) -> Result<Response, AppError> {
    let n = user.session.logout_other_devices().await?;
    Ok(if is_form(&headers) {
        user.session
            .flash(FlashLevel::Success, signed_out(n))
            .await?;
        Redirect::to("/devices").into_response()
    } else {
        Json(serde_json::json!({ "signed_out": n })).into_response()
    })
}

/// `GET /sessions`: this user's devices as JSON (this one first, then by last activity).
async fn sessions(user: Authenticated) -> Result<Json<Vec<UserSession>>, AppError> {
    Ok(Json(user.session.list_user_sessions().await?))
}

/// `POST /sessions/{handle}/revoke`: signs one of this user's devices out. A handle of
/// another user's device (or of none) revokes nothing.
async fn revoke(
    user: Authenticated,
    Path(handle): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let revoked = user.session.revoke_device(&handle).await?;
    if !is_form(&headers) {
        return Ok(Json(serde_json::json!({ "revoked": revoked })).into_response());
    }
    // Revoking this device's own handle ended this session: back to the sign-in form.
    if user.session.user_id().await?.is_none() {
        return Ok(Redirect::to("/").into_response());
    }
    user.session
        .flash(FlashLevel::Success, signed_out(u64::from(revoked)))
        .await?;
    Ok(Redirect::to("/devices").into_response())
}

/// The notice after signing devices out.
fn signed_out(n: u64) -> String {
    match n {
        0 => "No device was signed out.".to_owned(),
        1 => "Signed out 1 device.".to_owned(),
        n => format!("Signed out {n} devices."),
    }
}

/// One row of the devices page.
#[derive(Serialize)]
struct DeviceRow {
    handle: String,
    current: bool,
    summary: String,
    user_agent: String,
    ip: Option<String>,
    last_active: String,
    signed_in: String,
}

/// `GET /devices`: "Your devices", or the sign-in form's address when logged out.
async fn devices(State(state): State<AppState>, session: Session) -> Result<Response, AppError> {
    let Some(user) = session.user_id().await? else {
        return Ok(Redirect::to("/").into_response());
    };
    let now = Timestamp::now();
    let rows: Vec<DeviceRow> = session
        .list_user_sessions()
        .await?
        .into_iter()
        .map(|d| DeviceRow {
            handle: d.handle.map(|h| h.to_string()).unwrap_or_default(),
            current: d.current,
            summary: describe(d.user_agent.as_deref()),
            user_agent: d.user_agent.unwrap_or_default(),
            ip: d.ip,
            last_active: ago(now, d.last_seen),
            signed_in: ago(now, d.created_at),
        })
        .collect();
    // Shown once: a reload of the page shows no notice.
    let notices: Vec<String> = session
        .take_flash()
        .await?
        .into_iter()
        .map(|f| f.text)
        .collect();
    let notice = (!notices.is_empty()).then(|| notices.join(" "));
    let csrf = session.csrf_token().await?;
    Ok(render(
        &state,
        "devices.html",
        context! { user, devices => rows, notice, csrf },
    )?
    .into_response())
}

async fn admin(user: Authenticated) -> String {
    format!("Welcome to the admin area, {}", user.user_id)
}

/// "Chrome on Linux" from a user agent (woothee's browser and OS names), or what of it is
/// known.
pub fn describe(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|ua| !ua.trim().is_empty()) else {
        return "Unknown device".to_owned();
    };
    let known = |s: &str| !s.is_empty() && s != woothee::woothee::VALUE_UNKNOWN;
    match woothee::parser::Parser::new().parse(ua) {
        Some(r) if known(r.name) && known(r.os) => format!("{} on {}", r.name, r.os),
        Some(r) if known(r.name) => r.name.to_owned(),
        Some(r) if known(r.os) => format!("A browser on {}", r.os),
        _ => "Unknown device".to_owned(),
    }
}

/// "3 minutes ago": how long before `now` the moment `then` was, rounded.
pub fn ago(now: Timestamp, then: Timestamp) -> String {
    let secs = now.duration_since(then).as_secs();
    let minutes = (secs + 30) / 60;
    let hours = (secs + 1_800) / 3_600;
    let (n, unit) = if secs < 45 {
        return "just now".to_owned();
    } else if minutes < 60 {
        (minutes, "minute")
    } else if hours < 24 {
        (hours, "hour")
    } else {
        ((secs + 43_200) / 86_400, "day")
    };
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}
