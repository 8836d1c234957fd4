//! The checker's application on actix-web: the same routes, handlers and session options
//! as the tower one ([`super::app`]), through `coatcheck-actix`'s middleware, served from
//! a thread of its own (actix services are not `Send`) behind an [`Instance`] that the
//! clients call like the tower one.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{test, web, App, HttpResponse};
use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::Json;
use coatcheck::{CsrfLayer, SessionStore};
use coatcheck_actix::{CsrfMiddleware, SessionMiddleware};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};

use super::app::{self, AppState, Arg, Features};

/// A request for the actix thread and where its answer goes.
type Job = (http::Request<Body>, oneshot::Sender<http::Response<Body>>);

/// One application instance, on either framework.
#[derive(Clone)]
pub enum Instance {
    /// The tower layer in an axum router, called in-process.
    Tower(axum::Router),
    /// The actix-web middleware, served by a thread of its own.
    Actix(mpsc::UnboundedSender<Job>),
}

impl Instance {
    /// Sends `req` through the instance. `None`: the application panicked.
    pub async fn call(&self, req: http::Request<Body>) -> Option<http::Response<Body>> {
        match self {
            Instance::Tower(router) => {
                use tower::ServiceExt as _;
                match tokio::spawn(router.clone().oneshot(req)).await {
                    Ok(Ok(res)) => Some(res),
                    Ok(Err(never)) => match never {},
                    Err(_) => None,
                }
            }
            Instance::Actix(jobs) => {
                let (tx, rx) = oneshot::channel();
                jobs.send((req, tx)).ok()?;
                rx.await.ok()
            }
        }
    }

    /// Which framework, for reports.
    pub fn framework(&self) -> &'static str {
        match self {
            Instance::Tower(_) => "tower",
            Instance::Actix(_) => "actix",
        }
    }
}

type Answer = Result<HttpResponse, coatcheck_actix::Error>;

fn answer(a: app::Answer) -> Answer {
    let Json(seen) = a?;
    Ok(HttpResponse::Ok().json(seen))
}

/// The actix instance over `store`, with the options of [`app::app`]: started on a thread
/// of its own, ended when the last clone of the instance is dropped.
pub fn instance(
    store: Arc<dyn SessionStore>,
    express: bool,
    rng: StdRng,
    max_pause: Duration,
    idle: Duration,
    features: &Features,
) -> Instance {
    let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
    let limited: SessionMiddleware = app::session_options(
        &store,
        express,
        idle,
        features,
        Some(coatcheck::DEFAULT_MAX_DATA_BYTES),
    );
    let unlimited: SessionMiddleware = app::session_options(&store, express, idle, features, None);
    let state = AppState::new(features, rng, max_pause);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the actix instance");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let service =
                std::rc::Rc::new(test::init_service(routes(state, limited, unlimited)).await);
            while let Some((req, reply)) = queue.recv().await {
                let service = service.clone();
                tokio::task::spawn_local(async move {
                    let req = to_actix(req).await;
                    let res = test::call_service(&*service, req).await;
                    let _ = reply.send(from_actix(res).await);
                });
            }
        });
    });
    Instance::Actix(jobs)
}

macro_rules! plain {
    ($f:ident) => {
        |st: web::Data<AppState>, s: coatcheck_actix::Session| async move {
            answer(app::$f(State(st.get_ref().clone()), s.0).await)
        }
    };
}

macro_rules! with_query {
    ($f:ident) => {
        |st: web::Data<AppState>, q: web::Query<Arg>, s: coatcheck_actix::Session| async move {
            answer(app::$f(State(st.get_ref().clone()), Query(q.into_inner()), s.0).await)
        }
    };
}

fn routes(
    state: AppState,
    limited: SessionMiddleware,
    unlimited: SessionMiddleware,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .wrap(limited)
        .route("/read", web::get().to(plain!(read)))
        .route("/incr", web::post().to(plain!(incr)))
        .route("/put", web::post().to(with_query!(put)))
        .route("/remove", web::post().to(plain!(remove)))
        .route("/regenerate", web::post().to(plain!(regenerate)))
        .route("/login", web::post().to(with_query!(login)))
        .route("/destroy", web::post().to(plain!(destroy)))
        .route(
            "/logout_everywhere",
            web::post().to(plain!(logout_everywhere)),
        )
        .route("/logout_others", web::post().to(plain!(logout_others)))
        .route("/expiry", web::post().to(with_query!(expiry)))
        .route("/revoke_device", web::post().to(plain!(revoke_device)))
        .route("/password", web::post().to(with_query!(password)))
        .route("/remember", web::post().to(with_query!(remember)))
        .route("/flash", web::post().to(with_query!(flash)))
        .route("/take_flash", web::post().to(plain!(take_flash)))
        .route("/csrf", web::get().to(plain!(csrf)))
        .route("/big", web::post().to(with_query!(big)))
        // Its own middleware inside the application's: the outer one's session stays unused.
        .service(
            web::resource("/legacy")
                .wrap(unlimited)
                .route(web::post().to(plain!(legacy))),
        )
        // Only `/form` is behind the CSRF check, as in the tower app.
        .service(
            web::resource("/form")
                .wrap(CsrfMiddleware::new(CsrfLayer::new()))
                .route(
                    web::post().to(
                        |st: web::Data<AppState>,
                         s: coatcheck_actix::Session,
                         f: web::Form<Arg>| async move {
                            answer(
                                app::form(State(st.get_ref().clone()), s.0, Form(f.into_inner()))
                                    .await,
                            )
                        },
                    ),
                ),
        )
}

/// An `http` 1.x request as actix's test request.
async fn to_actix(req: http::Request<Body>) -> actix_http::Request {
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let method = actix_web::http::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(actix_web::http::Method::GET);
    let mut out = test::TestRequest::default()
        .method(method)
        .uri(&parts.uri.to_string());
    for (name, value) in parts.headers.iter() {
        out = out.append_header((name.as_str(), value.as_bytes()));
    }
    out.set_payload(bytes).to_request()
}

/// actix's response as an `http` 1.x one, the CSRF refusal's reason kept in its extensions.
async fn from_actix<B: actix_web::body::MessageBody>(
    res: actix_web::dev::ServiceResponse<B>,
) -> http::Response<Body> {
    let status = res.status().as_u16();
    let reason = res
        .response()
        .extensions()
        .get::<coatcheck::CsrfReason>()
        .copied();
    let headers: Vec<(String, Vec<u8>)> = res
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    let body = test::read_body(res).await;
    let mut out = http::Response::builder().status(status);
    for (name, value) in headers {
        out = out.header(name, value);
    }
    let mut out = out.body(Body::from(body)).unwrap_or_default();
    if let Some(reason) = reason {
        out.extensions_mut().insert(reason);
    }
    out
}
