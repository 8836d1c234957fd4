//! Between actix-web's `http` 0.2 types and the engine's `http` 1.x types: the few headers
//! the engine reads, copied; the ones it answers, converted; a failure as a response.

use actix_web::http::header::{self, HeaderMap as ActixHeaders};
use actix_web::http::StatusCode as ActixStatus;
use actix_web::HttpResponse;
use coatcheck::SessionFailure;

/// The values of `names` in actix's headers, as an `http` 1.x map (values that are not
/// valid header values there either are dropped).
pub(crate) fn copy(from: &ActixHeaders, names: &[http::HeaderName]) -> http::HeaderMap {
    let mut to = http::HeaderMap::new();
    for name in names {
        for value in from.get_all(name.as_str()) {
            if let Ok(v) = http::HeaderValue::from_bytes(value.as_bytes()) {
                to.append(name.clone(), v);
            }
        }
    }
    to
}

/// Every header of actix's map, as an `http` 1.x map.
pub(crate) fn copy_all(from: &ActixHeaders) -> http::HeaderMap {
    let mut to = http::HeaderMap::with_capacity(from.len());
    for (name, value) in from.iter() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            to.append(n, v);
        }
    }
    to
}

/// Adds the engine's headers to a response: `Set-Cookie` appended, others set, and
/// `Cache-Control: no-store` when asked and absent.
pub(crate) fn apply(
    to: &mut ActixHeaders,
    add: Vec<(http::HeaderName, http::HeaderValue)>,
    no_store: bool,
) {
    for (name, value) in add {
        let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_str().as_bytes()),
            header::HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        if n == header::SET_COOKIE {
            to.append(n, v);
        } else {
            to.insert(n, v);
        }
    }
    if no_store && !to.contains_key(header::CACHE_CONTROL) {
        to.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
}

/// actix's status for an `http` 1.x one.
pub(crate) fn status(s: http::StatusCode) -> ActixStatus {
    ActixStatus::from_u16(s.as_u16()).unwrap_or(ActixStatus::INTERNAL_SERVER_ERROR)
}

/// The `http` 1.x status for actix's.
pub(crate) fn status_1x(s: ActixStatus) -> http::StatusCode {
    http::StatusCode::from_u16(s.as_u16()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

/// The answer when the session could not be read or written, as the tower layer answers
/// it: the status, the message as plain text, `no-store`, `Retry-After: 1` for a `503`, and
/// the [`SessionFailure`] in the response's extensions for an application's error page.
pub(crate) fn failure_response(failure: SessionFailure) -> HttpResponse {
    let code = status(failure.status);
    let mut res = HttpResponse::build(code);
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"));
    if code == ActixStatus::SERVICE_UNAVAILABLE {
        res.insert_header((header::RETRY_AFTER, "1"));
    }
    let mut res = res.body(failure.message);
    res.extensions_mut().insert(failure);
    res
}
