//! Running one history: devices (a cookie jar each) with a few tabs each send random
//! operations concurrently through the real middleware; every request is recorded with its
//! invocation and completion time, its answer and what it did to the cookie.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use coatcheck::{KeyRing, SessionId};
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use http::Request;
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::actix_app::Instance;
use crate::history::app::{Seen, SECRET};

/// The size and mix of one history.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Users, each with `devices_per_user` devices (browsers) that log in as them.
    pub users: usize,
    pub devices_per_user: usize,
    /// Tabs per device: requests of one device's tabs overlap and share its cookie jar.
    pub tabs: usize,
    /// Requests per tab.
    pub ops_per_tab: usize,
    /// The store keeps a user index: `logout_everywhere` / `logout_other_devices` are used.
    pub user_index: bool,
    /// The store keeps devices: `revoke_device` is used.
    pub devices: bool,
    /// Longest pause around each store call, and inside a handler.
    pub store_pause: Duration,
    pub handler_pause: Duration,
}

impl Profile {
    pub const CI: Profile = Profile {
        users: 3,
        devices_per_user: 2,
        tabs: 2,
        ops_per_tab: 14,
        user_index: true,
        devices: true,
        store_pause: Duration::from_millis(3),
        handler_pause: Duration::from_millis(4),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Incr,
    Put,
    Remove,
    Regenerate,
    Login,
    Destroy,
    LogoutEverywhere,
    LogoutOthers,
    Expiry,
    RevokeDevice,
    Password,
    Remember,
    /// Queues a flash message (its text unique in the history).
    Flash,
    /// Shows the queued flash messages, taking them.
    TakeFlash,
    /// `GET /csrf`: the tab learns a CSRF token of the session its cookie names.
    Csrf,
    /// A form post under `CsrfLayer` that writes the register: with the tab's token in
    /// the header or the form, cross-site, or without a token (`arg`: `value variant`).
    Form,
    /// Writes the register and a value past the session size limit: must store nothing.
    Big,
    /// Writes a value past the size limit through a layer without one: a session stored
    /// before the limit existed, which must go on working (and may only shrink).
    Legacy,
}

impl Op {
    fn path(self) -> &'static str {
        match self {
            Op::Read => "/read",
            Op::Incr => "/incr",
            Op::Put => "/put",
            Op::Remove => "/remove",
            Op::Regenerate => "/regenerate",
            Op::Login => "/login",
            Op::Destroy => "/destroy",
            Op::LogoutEverywhere => "/logout_everywhere",
            Op::LogoutOthers => "/logout_others",
            Op::Expiry => "/expiry",
            Op::RevokeDevice => "/revoke_device",
            Op::Password => "/password",
            Op::Remember => "/remember",
            Op::Flash => "/flash",
            Op::TakeFlash => "/take_flash",
            Op::Csrf => "/csrf",
            Op::Form => "/form",
            Op::Big => "/big",
            Op::Legacy => "/legacy",
        }
    }

    fn pick(rng: &mut StdRng, user_index: bool, devices: bool) -> Op {
        let table: &[(Op, u32)] = &[
            (Op::Read, 14),
            (Op::Incr, 20),
            (Op::Put, 12),
            (Op::Remove, 4),
            (Op::Regenerate, 8),
            (Op::Login, 12),
            (Op::Destroy, 3),
            (Op::LogoutEverywhere, if user_index { 3 } else { 0 }),
            (Op::LogoutOthers, if user_index { 3 } else { 0 }),
            (Op::Expiry, 4),
            (Op::RevokeDevice, if devices { 4 } else { 0 }),
            (Op::Password, 2),
            (Op::Remember, 5),
            (Op::Flash, 6),
            (Op::TakeFlash, 8),
            (Op::Csrf, 4),
            (Op::Form, 7),
            (Op::Big, 1),
            (Op::Legacy, 1),
        ];
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        let mut x = rng.gen_range(0..total);
        for (op, w) in table {
            if x < *w {
                return *op;
            }
            x -= w;
        }
        Op::Read
    }
}

/// What a response did to the device's cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CookieOut {
    Untouched,
    Set(SessionId),
    Cleared,
}

/// One request of the history.
#[derive(Debug, Clone)]
pub struct Event {
    pub index: usize,
    /// The app instance that served it.
    pub instance: usize,
    pub device: usize,
    pub tab: usize,
    pub op: Op,
    pub arg: String,
    /// Microseconds since the history began.
    pub invoked: u64,
    pub completed: u64,
    /// The session id the request's cookie carried.
    pub sent: Option<SessionId>,
    /// HTTP status; 0 when the request panicked.
    pub status: u16,
    pub body: String,
    pub seen: Option<Seen>,
    pub cookie: CookieOut,
    /// `/form`: the session id the CSRF token it sent was issued under (`None`: it sent
    /// none).
    pub token_id: Option<SessionId>,
    /// Why `CsrfLayer` refused it (`CsrfReason::as_str`).
    pub refused: Option<&'static str>,
}

impl Event {
    /// A 2xx that did not clear the cookie: what it did is acknowledged.
    pub fn acked(&self) -> bool {
        (200..300).contains(&self.status) && self.cookie != CookieOut::Cleared
    }

    pub fn lineage(&self) -> Option<&str> {
        self.seen.as_ref().and_then(|s| s.lineage.as_deref())
    }

    /// The register value a `/put`, `/form` or `/big` writes.
    pub fn value(&self) -> &str {
        self.arg.split(' ').next().unwrap_or_default()
    }

    /// How a `/form` was sent: `header`, `field`, `cross` or `none`.
    pub fn variant(&self) -> &str {
        self.arg.split(' ').nth(1).unwrap_or_default()
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = |id: &SessionId| id.short_hash().to_string();
        write!(
            f,
            "#{:<4} i{} d{}t{} [{:>8}µs → {:>8}µs] {:<18} {:<6} cookie {:<8} → {} {} set-cookie {}",
            self.index,
            self.instance,
            self.device,
            self.tab,
            self.invoked,
            self.completed,
            self.op.path(),
            self.arg,
            self.sent.as_ref().map(short).unwrap_or_else(|| "-".into()),
            self.status,
            self.body,
            match &self.cookie {
                CookieOut::Untouched => "-".to_string(),
                CookieOut::Set(id) => short(id),
                CookieOut::Cleared => "cleared".to_string(),
            }
        )
    }
}

/// How device `d` carries its session: API clients (every third device) the token in an
/// `Authorization: Bearer` header, answered in `x-session-token`; browsers the cookie,
/// some of them behind a basic-auth proxy that adds `Authorization: Basic` to every
/// request (which must not hide the cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Browser,
    BrowserBehindBasicAuth,
    Api,
}

pub fn client(device: usize) -> Client {
    match device % 3 {
        2 => Client::Api,
        1 if device % 2 == 1 => Client::BrowserBehindBasicAuth,
        _ => Client::Browser,
    }
}

/// The user device `d` belongs to.
pub fn owner(profile: &Profile, device: usize) -> String {
    format!("u{}", device / profile.devices_per_user)
}

/// Each device's cookie jar (a browser's cookie, an API client's token).
pub type Jars = Vec<Arc<Mutex<Option<String>>>>;

/// A jar per device of `profile`, empty.
pub fn jars(profile: &Profile) -> Jars {
    (0..profile.users * profile.devices_per_user)
        .map(|_| Arc::default())
        .collect()
}

/// Runs one history (or one phase of it) of `profile` against the app instances `apps`
/// (each request to one drawn at random: no stickiness), with the devices' `jars`, ops
/// drawn from `seed`; times count from `start`. Events are sorted and numbered by
/// [`number`].
pub async fn run(
    apps: &[Instance],
    profile: Profile,
    seed: u64,
    start: Instant,
    jars: &Jars,
) -> Vec<Event> {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let log: Arc<Mutex<Vec<Event>>> = Arc::default();
    let mut tasks = Vec::new();
    for (device, jar) in jars.iter().enumerate() {
        for tab in 0..profile.tabs {
            let (apps, jar, log, keys) = (apps.to_vec(), jar.clone(), log.clone(), keys.clone());
            // The tab's CSRF token, and the session id it was issued under.
            let mut csrf: Option<(String, SessionId)> = None;
            // Values are unique in the whole history: a phased one (`run` once per phase,
            // `seed` + phase << 32) names them by phase too.
            let phase = match seed >> 32 {
                0 => String::new(),
                p => format!("p{p}"),
            };
            let tab_seed = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((device * 16 + tab) as u64);
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(tab_seed);
                for i in 0..profile.ops_per_tab {
                    let op = Op::pick(
                        &mut rng,
                        profile.user_index,
                        profile.devices && profile.user_index,
                    );
                    let arg = match op {
                        Op::Put => format!("v{device}.{tab}.{i}{phase}"),
                        Op::Login => {
                            if rng.gen_bool(0.85) {
                                owner(&profile, device)
                            } else {
                                format!("u{}", rng.gen_range(0..profile.users))
                            }
                        }
                        Op::Expiry => rng.gen_range(60..600).to_string(),
                        Op::Password => {
                            if rng.gen_bool(0.7) {
                                owner(&profile, device)
                            } else {
                                format!("u{}", rng.gen_range(0..profile.users))
                            }
                        }
                        Op::Remember => rng.gen_bool(0.5).to_string(),
                        Op::Flash => format!("f{device}.{tab}.{i}{phase}"),
                        Op::Big => format!("big{device}.{tab}.{i}{phase}"),
                        Op::Form => {
                            let how = ["header", "header", "field", "field", "cross", "none"];
                            format!(
                                "w{device}.{tab}.{i}{phase} {}",
                                how[rng.gen_range(0..how.len())]
                            )
                        }
                        _ => String::new(),
                    };
                    let think = rng.gen_range(0..1500);
                    tokio::time::sleep(Duration::from_micros(think)).await;
                    let instance = rng.gen_range(0..apps.len());
                    // A form is posted from a page: a tab without a token loads one first.
                    let page = op == Op::Form && !arg.ends_with(" none");
                    let load_page = page && csrf.is_none() && client(device) != Client::Api;
                    // A double click on "Sign in": the same form submitted twice at once,
                    // with the same cookie, each answer applied to the jar as it arrives.
                    let double = op == Op::Login && rng.gen_bool(0.3);
                    if double {
                        let second = rng.gen_range(0..apps.len());
                        let mut no_token = None;
                        let (a, b) = tokio::join!(
                            request(
                                &apps[instance],
                                &keys,
                                &jar,
                                &mut csrf,
                                start,
                                (device, tab),
                                op,
                                arg.clone(),
                            ),
                            request(
                                &apps[second],
                                &keys,
                                &jar,
                                &mut no_token,
                                start,
                                (device, tab),
                                op,
                                arg,
                            )
                        );
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        log.push(Event { instance, ..a });
                        log.push(Event {
                            instance: second,
                            ..b
                        });
                        continue;
                    }
                    let steps = load_page
                        .then(|| (Op::Csrf, String::new()))
                        .into_iter()
                        .chain([(op, arg)]);
                    for (op, arg) in steps {
                        let event = request(
                            &apps[instance],
                            &keys,
                            &jar,
                            &mut csrf,
                            start,
                            (device, tab),
                            op,
                            arg,
                        )
                        .await;
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Event { instance, ..event });
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("a client task panicked");
    }
    let events = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    number(events)
}

/// Every device reads its session once, one after another, through instance 0: the
/// window after a deploy in which every active session is used (in real time, one idle
/// timeout; a session not used in it has expired).
pub async fn sweep(apps: &[Instance], start: Instant, jars: &Jars) -> Vec<Event> {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let mut events = Vec::new();
    for (device, jar) in jars.iter().enumerate() {
        let e = request(
            &apps[0],
            &keys,
            jar,
            &mut None,
            start,
            (device, 9),
            Op::Read,
            String::new(),
        )
        .await;
        events.push(e);
    }
    events
}

/// The cap pressed: every device signs in as `user` at the same moment, each through an
/// instance of its own choosing, after the last phase — so the final state's `cap` check
/// sees what concurrent limited creates of one user left (a `create_limited` that counts
/// and creates in two steps lets several pass; the histories' own logins, spread out,
/// found it only at three times their seeds).
pub async fn burst(apps: &[Instance], start: Instant, jars: &Jars, user: &str) -> Vec<Event> {
    let keys = KeyRing::new([SECRET]).expect("long secret");
    let logins = jars.iter().enumerate().map(|(device, jar)| {
        let (keys, user) = (keys.clone(), user.to_owned());
        let app = &apps[device % apps.len()];
        async move {
            request(
                app,
                &keys,
                jar,
                &mut None,
                start,
                (device, 8),
                Op::Login,
                user,
            )
            .await
        }
    });
    futures_util::future::join_all(logins).await
}

/// Sorts events by invocation and numbers them.
pub fn number(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by_key(|e| (e.invoked, e.completed));
    for (i, e) in events.iter_mut().enumerate() {
        e.index = i;
    }
    events
}

#[allow(clippy::too_many_arguments)]
async fn request(
    app: &Instance,
    keys: &KeyRing,
    jar: &Mutex<Option<String>>,
    csrf: &mut Option<(String, SessionId)>,
    start: Instant,
    (device, tab): (usize, usize),
    op: Op,
    arg: String,
) -> Event {
    let kind = client(device);
    // The jar holds `name=value` for a browser, the bare token for an API client.
    let cookie = jar.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let token_of = |c: &str| match kind {
        Client::Api => c.to_owned(),
        _ => c
            .split_once('=')
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default(),
    };
    let sent = cookie
        .as_deref()
        .and_then(|c| keys.verify_cookie_value(&token_of(c)))
        .map(|v| v.id);
    let uri = match op {
        Op::Put | Op::Login | Op::Password | Op::Remember | Op::Flash | Op::Big => {
            format!(
                "{}?v={}",
                op.path(),
                arg.split(' ').next().unwrap_or_default()
            )
        }
        Op::Expiry => format!("{}?secs={arg}", op.path()),
        _ => op.path().to_string(),
    };
    let method = if matches!(op, Op::Read | Op::Csrf) {
        "GET"
    } else {
        "POST"
    };
    let mut req = Request::builder().method(method).uri(uri);
    // A form: its value in the body, the tab's token (a browser's) where the variant says.
    let mut token_id = None;
    let mut body = Body::empty();
    if op == Op::Form {
        let value = arg.split(' ').next().unwrap_or_default();
        let variant = arg.split(' ').nth(1).unwrap_or_default();
        let mut form = format!("v={value}");
        match (kind, &*csrf, variant) {
            (Client::Api, _, _) | (_, None, _) | (_, _, "none") => {}
            (_, Some((token, id)), "field") => {
                form.push_str(&format!("&csrf_token={token}"));
                token_id = Some(id.clone());
            }
            (_, Some((token, id)), _) => {
                req = req.header(coatcheck::csrf::CSRF_HEADER, token);
                token_id = Some(id.clone());
            }
        }
        if kind != Client::Api {
            let site = if variant == "cross" {
                "cross-site"
            } else {
                "same-origin"
            };
            req = req.header("sec-fetch-site", site);
        }
        // With and without parameters, as browsers and clients send it. (Not in mixed case:
        // CsrfLayer takes it, but axum's `Form` answers 415.)
        let content_type = match value.len() % 3 {
            0 => "application/x-www-form-urlencoded",
            1 => "application/x-www-form-urlencoded; charset=UTF-8",
            _ => "application/x-www-form-urlencoded;charset=utf-8",
        };
        req = req.header(http::header::CONTENT_TYPE, content_type);
        body = Body::from(form);
    }
    match (kind, &cookie) {
        // An API client sends the header from its first call (empty until it has a token).
        (Client::Api, c) => {
            req = req.header(
                AUTHORIZATION,
                format!("Bearer {}", c.as_deref().unwrap_or("")),
            );
        }
        (Client::BrowserBehindBasicAuth, c) => {
            req = req.header(AUTHORIZATION, "Basic dXNlcjpwYXNz");
            if let Some(c) = c {
                req = req.header(COOKIE, c);
            }
        }
        (Client::Browser, Some(c)) => req = req.header(COOKIE, c),
        (Client::Browser, None) => {}
    }
    let req = req.body(body).expect("request");
    let invoked = start.elapsed().as_micros() as u64;
    let answer = app.call(req).await;
    let mut refused = None;
    let (status, body, out) = match answer {
        None => (0, "panicked".to_string(), CookieOut::Untouched),
        Some(res) => {
            let status = res.status().as_u16();
            refused = res
                .extensions()
                .get::<coatcheck::CsrfReason>()
                .map(|r| r.as_str());
            let set_cookie = res
                .headers()
                .get(SET_COOKIE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let token = res
                .headers()
                .get(coatcheck::BEARER_RESPONSE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // What the client must not get: a browser answered in the header, an API
            // client answered with a cookie.
            let crossed = match kind {
                Client::Api => set_cookie.is_some(),
                _ => token.is_some(),
            };
            // The token as a Set-Cookie line: the same handling below.
            let set = match kind {
                Client::Api => token.map(|t| {
                    if t.is_empty() {
                        "sid=; Max-Age=0".to_owned()
                    } else {
                        format!("sid={t}")
                    }
                }),
                _ => set_cookie,
            };
            // The layer's own failures have no body; what they were is in the extension.
            let failure = res
                .extensions()
                .get::<coatcheck::SessionFailure>()
                .map(|f| f.message);
            let body = res
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_else(|e| format!("body error: {e}"));
            let out = match set {
                None => CookieOut::Untouched,
                Some(set) => {
                    let pair = set.split(';').next().unwrap_or("").trim().to_string();
                    let value = pair.split_once('=').map(|(_, v)| v).unwrap_or("");
                    let mut jar = jar.lock().unwrap_or_else(|e| e.into_inner());
                    match keys.verify_cookie_value(value) {
                        Some(v) if !set.contains("Max-Age=0") => {
                            *jar = Some(match kind {
                                Client::Api => value.to_owned(),
                                _ => pair,
                            });
                            CookieOut::Set(v.id)
                        }
                        _ => {
                            *jar = None;
                            CookieOut::Cleared
                        }
                    }
                }
            };
            let body = match (crossed, failure) {
                (true, _) => format!("transport crossed: {body}"),
                (false, Some(message)) if body.is_empty() => message.to_owned(),
                _ => body,
            };
            (status, body, out)
        }
    };
    let completed = start.elapsed().as_micros() as u64;
    let seen = serde_json::from_str::<Seen>(&body).ok();
    // A token learnt: kept with the id of the session it belongs to.
    if let Some(token) = seen.as_ref().and_then(|s| s.csrf.clone()) {
        let id = match &out {
            CookieOut::Set(id) => Some(id.clone()),
            CookieOut::Untouched => sent.clone(),
            CookieOut::Cleared => None,
        };
        *csrf = id.map(|id| (token, id));
    }
    Event {
        index: 0,
        instance: 0,
        device,
        tab,
        op,
        arg,
        invoked,
        completed,
        sent,
        status,
        body,
        seen,
        cookie: out,
        token_id,
        refused,
    }
}
