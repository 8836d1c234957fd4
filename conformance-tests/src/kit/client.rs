//! An in-process HTTP client with a browser's cookie jar.

use std::collections::BTreeMap;
use std::fmt;

use axum::body::{Body, Bytes};
use http::header::{HeaderMap, COOKIE, SET_COOKIE};
use http::{Extensions, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};

/// A browser's cookies: name → value, updated from every `Set-Cookie` the client gets (a
/// cookie set empty or with `Max-Age=0` is removed), sent as one `Cookie` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jar {
    cookies: BTreeMap<String, String>,
}

impl Jar {
    /// An empty jar.
    pub fn new() -> Self {
        Jar::default()
    }

    /// The value of cookie `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// Sets cookie `name` (as a browser that was told to, or a test that forges one).
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.cookies.insert(name.into(), value.into());
    }

    /// Removes cookie `name`; its old value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.cookies.remove(name)
    }

    /// Forgets every cookie (a new private window).
    pub fn clear(&mut self) {
        self.cookies.clear();
    }

    /// True if the jar holds no cookie.
    pub fn is_empty(&self) -> bool {
        self.cookies.is_empty()
    }

    /// The `Cookie` header a browser would send: `a=1; b=2`, `None` when empty.
    pub fn header(&self) -> Option<String> {
        (!self.cookies.is_empty()).then(|| {
            self.cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Keeps what one `Set-Cookie` header says (an empty value or `Max-Age=0` removes).
    pub fn store(&mut self, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else {
            return;
        };
        let expired = parts.any(|a| {
            a.trim()
                .split_once('=')
                .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("max-age") && v.trim() == "0")
        });
        if value.is_empty() || expired {
            self.cookies.remove(name);
        } else {
            self.cookies.insert(name.to_owned(), value.to_owned());
        }
    }
}

/// One answer: status, headers, extensions (coatcheck's `SessionFailure` travels there)
/// and the whole body.
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// Every header.
    pub headers: HeaderMap,
    /// The response's extensions.
    pub extensions: Extensions,
    /// The body, read to its end.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON body ({e}): {}", self.text()))
    }

    /// Every `Set-Cookie` header, in order.
    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The first `Set-Cookie` header.
    pub fn set_cookie(&self) -> Option<&str> {
        self.set_cookies().into_iter().next()
    }

    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

/// Drives an axum [`Router`](axum::Router), or any tower service answering HTTP, in
/// process (`tower::ServiceExt::oneshot` on a clone per request) as one browser: the
/// jar's cookies go with every request (unless the request sets its own `Cookie`), and
/// every `Set-Cookie` answered is kept.
///
/// ```
/// use axum::{routing::get, Router};
/// use coatcheck::memory::MemoryStore;
/// use coatcheck::{KeyRing, Session, SessionLayer};
/// use coatcheck_conformance::kit::TestClient;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// async fn visits(session: Session) -> String {
///     session.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).await.unwrap().to_string()
/// }
/// let keys = KeyRing::new(["a secret of at least 32 bytes, really"]).unwrap();
/// let layer = SessionLayer::builder(MemoryStore::new(), keys).build().unwrap();
/// let app = Router::new().route("/", get(visits)).layer(layer);
///
/// let mut browser = TestClient::new(app);
/// assert_eq!(browser.get("/").await.text(), "1");
/// assert_eq!(browser.get("/").await.text(), "2"); // the jar sent the cookie back
/// assert_eq!(browser.other().get("/").await.text(), "1"); // another browser
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TestClient<S = axum::Router> {
    service: S,
    /// The browser's cookies.
    pub jar: Jar,
}

impl<S, B> TestClient<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: fmt::Debug,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send,
    B::Error: fmt::Debug,
{
    /// A browser with an empty jar in front of `service`.
    pub fn new(service: S) -> Self {
        TestClient {
            service,
            jar: Jar::new(),
        }
    }

    /// Another browser (an empty jar) in front of the same service.
    pub fn other(&self) -> Self {
        TestClient::new(self.service.clone())
    }

    /// The service.
    pub fn service(&self) -> &S {
        &self.service
    }

    /// `GET uri`.
    pub async fn get(&mut self, uri: &str) -> Reply {
        self.send(Request::get(uri), Body::empty()).await
    }

    /// `POST uri`, no body.
    pub async fn post(&mut self, uri: &str) -> Reply {
        self.send(Request::post(uri), Body::empty()).await
    }

    /// `POST uri` with an urlencoded form body.
    pub async fn post_form(&mut self, uri: &str, form: &str) -> Reply {
        let req = Request::post(uri).header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        self.send(req, Body::from(form.to_owned())).await
    }

    /// Any request: the jar's cookies are added unless `request` has a `Cookie` header.
    /// Panics if the request cannot be built or the service fails (a test fixture).
    pub async fn send(&mut self, request: http::request::Builder, body: Body) -> Reply {
        let mut request = request;
        let has_cookie = request
            .headers_ref()
            .is_some_and(|h| h.contains_key(COOKIE));
        if let (false, Some(c)) = (has_cookie, self.jar.header()) {
            request = request.header(COOKIE, c);
        }
        let request = request
            .body(body)
            .unwrap_or_else(|e| panic!("invalid test request: {e}"));
        let response = self
            .service
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| panic!("the service failed: {e:?}"));
        let (parts, body) = response.into_parts();
        for c in parts.headers.get_all(SET_COOKIE) {
            if let Ok(c) = c.to_str() {
                self.jar.store(c);
            }
        }
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("reading the body failed: {e:?}"))
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            extensions: parts.extensions,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Jar;

    #[test]
    fn the_jar_keeps_replaces_and_removes() {
        let mut jar = Jar::new();
        jar.store("id=abc; Path=/; HttpOnly");
        jar.store("other=1");
        assert_eq!(jar.header().as_deref(), Some("id=abc; other=1"));
        jar.store("id=def; Path=/");
        assert_eq!(jar.get("id"), Some("def"));
        jar.store("id=; Max-Age=0; Path=/");
        assert_eq!(jar.get("id"), None);
        jar.store("other=2; Max-Age=0");
        assert!(jar.is_empty());
        assert_eq!(jar.header(), None);
    }
}
