//! What the layer captures about the device at login, and what
//! [`Session::list_user_sessions`](crate::Session::list_user_sessions) answers.

use std::net::IpAddr;

use coatcheck_core::{Device, DeviceHandle, SessionInfo, Timestamp};
use http::HeaderValue;
use serde::Serialize;

/// How much of the client's address a session keeps (see
/// [`SessionLayerBuilder::capture_ip`](crate::SessionLayerBuilder::capture_ip)).
///
/// The address comes from the leftmost `X-Forwarded-For` entry when
/// [`trust_proxy`](crate::SessionLayerBuilder::trust_proxy) is on, else from the
/// connection (axum: `ConnectInfo<SocketAddr>`, serve with
/// `into_make_service_with_connect_info`; actix-web: the peer address); without either,
/// none is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IpCapture {
    /// The whole address (the default).
    #[default]
    Full,
    /// The network only: IPv4 to /24 (`203.0.113.0`), IPv6 to /48 — enough for "a
    /// different network", not enough to name a household.
    Truncated,
    /// No address is kept.
    Off,
}

/// The request's device details, taken when the layer sees the request (the header is
/// shared, not copied, until a login stores it).
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestMeta {
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) ip: Option<IpAddr>,
}

impl RequestMeta {
    pub(crate) fn capture(
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
        user_agent: bool,
        ip: IpCapture,
        trust_proxy: bool,
    ) -> Self {
        let user_agent = user_agent
            .then(|| headers.get(http::header::USER_AGENT).cloned())
            .flatten();
        let ip = match ip {
            IpCapture::Off => None,
            mode => client_ip(headers, peer, trust_proxy).map(|a| truncate(a, mode)),
        };
        RequestMeta { user_agent, ip }
    }

    /// The device a login records: `handle` kept across rotations, details of this request.
    pub(crate) fn device(&self, handle: Option<DeviceHandle>) -> Device {
        let device = Device::new()
            .with_user_agent(self.user_agent.as_ref().and_then(|v| v.to_str().ok()))
            .with_ip(self.ip.map(|a| a.to_string()).as_deref());
        match handle {
            Some(h) => device.with_handle(h),
            None => device,
        }
    }
}

fn client_ip(headers: &http::HeaderMap, peer: Option<IpAddr>, trust_proxy: bool) -> Option<IpAddr> {
    if trust_proxy {
        let forwarded = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer
}

fn truncate(addr: IpAddr, mode: IpCapture) -> IpAddr {
    if mode != IpCapture::Truncated {
        return addr;
    }
    match addr {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

/// One of the user's live sessions, as a "your devices" page shows it. It never holds the
/// session id: the [`handle`](UserSession::handle) names it instead, safe to show and to
/// put in a URL for [`Session::revoke_device`](crate::Session::revoke_device). Serializes
/// to JSON with times as milliseconds since the Unix epoch.
///
/// ```
/// use coatcheck::{Session, SessionError, UserSession};
///
/// async fn devices(session: Session) -> Result<String, SessionError> {
///     let list: Vec<UserSession> = session.list_user_sessions().await?;
///     Ok(list
///         .iter()
///         .map(|d| format!("{}{}", d.user_agent.as_deref().unwrap_or("unknown"),
///                          if d.current { " (this device)" } else { "" }))
///         .collect::<Vec<_>>()
///         .join("\n"))
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UserSession {
    /// The session's device handle (`None` for a session stored without device details:
    /// signed in before they were kept, or by a store that keeps none).
    pub handle: Option<DeviceHandle>,
    /// Whether this is the session of the current request.
    pub current: bool,
    /// The `User-Agent` at login.
    pub user_agent: Option<String>,
    /// The client address at login, as configured ([`IpCapture`]).
    pub ip: Option<String>,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When it was last active (moved at most once per `touch_after` by reads, by every
    /// write).
    pub last_seen: Timestamp,
    /// When it expires unless used.
    pub expires_at: Timestamp,
}

impl UserSession {
    pub(crate) fn new(info: SessionInfo, current: bool) -> Self {
        let (handle, user_agent, ip) = match info.device {
            Some(d) => (Some(d.handle), d.user_agent, d.ip),
            None => (None, None, None),
        };
        UserSession {
            handle,
            current,
            user_agent,
            ip,
            created_at: info.created_at,
            last_seen: info.last_seen,
            expires_at: info.expires_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_network_only() {
        let v4: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(
            truncate(v4, IpCapture::Truncated).to_string(),
            "203.0.113.0"
        );
        assert_eq!(truncate(v4, IpCapture::Full), v4);
        let v6: IpAddr = "2001:db8:85a3:8d3:1319:8a2e:370:7348".parse().unwrap();
        assert_eq!(
            truncate(v6, IpCapture::Truncated).to_string(),
            "2001:db8:85a3::"
        );
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let req = http::Request::builder()
            .header("x-forwarded-for", "198.51.100.9, 10.0.0.1")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap();
        let h = req.headers();
        let meta = RequestMeta::capture(h, None, true, IpCapture::Full, true);
        assert_eq!(meta.ip, Some("198.51.100.9".parse().unwrap()));
        let meta = RequestMeta::capture(h, None, true, IpCapture::Full, false);
        assert_eq!(meta.ip, None);
        let peer = Some("192.0.2.1".parse().unwrap());
        let meta = RequestMeta::capture(h, peer, true, IpCapture::Full, false);
        assert_eq!(meta.ip, peer);
        let meta = RequestMeta::capture(h, None, false, IpCapture::Off, true);
        assert_eq!((meta.ip, meta.user_agent), (None, None));
    }
}
