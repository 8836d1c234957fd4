//! The expiry policy, as pure functions.

use std::time::Duration;

use crate::Timestamp;

/// When sessions expire: an idle timeout that rolls with activity, an optional absolute
/// lifetime counted from `created_at` that activity never extends, and whether the cookie is
/// a browser-session cookie (no `Expires`; the server still enforces both timeouts).
///
/// Rolling expiry does not write to the store on every request: a touch is due only when it
/// would move `expires_at` by at least `touch_after`.
///
/// ```
/// use coatcheck::core::{ExpiryPolicy, Timestamp};
/// use std::time::Duration;
///
/// let policy = ExpiryPolicy::new(Duration::from_secs(1800))
///     .with_absolute_timeout(Some(Duration::from_secs(8 * 3600)))
///     .with_touch_after(Duration::from_secs(60));
/// let created = Timestamp::from_millis(0);
/// let exp = policy.expires_at(created, created);
/// assert_eq!(exp, created + Duration::from_secs(1800));
/// // 30 s later a touch would move expiry by only 30 s: not due yet.
/// assert_eq!(policy.touch_due(created, exp, created + Duration::from_secs(30)), None);
/// // 2 min later it is.
/// assert!(policy.touch_due(created, exp, created + Duration::from_secs(120)).is_some());
/// // Near the absolute limit expiry is capped.
/// let late = created + Duration::from_secs(8 * 3600 - 10);
/// assert_eq!(policy.expires_at(created, late), created + Duration::from_secs(8 * 3600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpiryPolicy {
    /// Inactivity after which a session expires; every touch or save restarts it.
    pub idle_timeout: Duration,
    /// Lifetime from creation after which the session expires whatever the activity.
    pub absolute_timeout: Option<Duration>,
    /// Send cookies without `Expires` (they end with the browser session).
    pub browser_session: bool,
    /// The least change of `expires_at` that is worth a store write.
    pub touch_after: Duration,
}

impl Default for ExpiryPolicy {
    /// 24 h idle timeout, no absolute lifetime, persistent cookies, touch after 60 s.
    fn default() -> Self {
        ExpiryPolicy::new(Duration::from_secs(24 * 3600))
    }
}

impl ExpiryPolicy {
    /// A policy with this idle timeout, no absolute lifetime, persistent cookies and
    /// `touch_after` = min(60 s, idle timeout / 2).
    pub fn new(idle_timeout: Duration) -> Self {
        ExpiryPolicy {
            idle_timeout,
            absolute_timeout: None,
            browser_session: false,
            touch_after: Duration::from_secs(60).min(idle_timeout / 2),
        }
    }

    /// Sets the absolute lifetime.
    pub fn with_absolute_timeout(mut self, absolute: Option<Duration>) -> Self {
        self.absolute_timeout = absolute;
        self
    }

    /// Sets browser-session cookies.
    pub fn with_browser_session(mut self, yes: bool) -> Self {
        self.browser_session = yes;
        self
    }

    /// Sets the least expiry change worth a touch.
    pub fn with_touch_after(mut self, touch_after: Duration) -> Self {
        self.touch_after = touch_after;
        self
    }

    /// The latest instant the absolute lifetime allows, if there is one.
    pub fn absolute_deadline(&self, created_at: Timestamp) -> Option<Timestamp> {
        self.absolute_timeout.map(|a| created_at + a)
    }

    /// The `expires_at` a session created at `created_at` gets when active at `now`:
    /// `now + idle_timeout`, capped at `created_at + absolute_timeout`.
    pub fn expires_at(&self, created_at: Timestamp, now: Timestamp) -> Timestamp {
        let idle = now + self.idle_timeout;
        match self.absolute_deadline(created_at) {
            Some(deadline) => idle.min(deadline),
            None => idle,
        }
    }

    /// The new `expires_at` if a touch is due at `now`, i.e. if it would move the current
    /// `expires_at` forward by at least `touch_after`; `None` otherwise.
    pub fn touch_due(
        &self,
        created_at: Timestamp,
        current_expires_at: Timestamp,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let next = self.expires_at(created_at, now);
        (next > current_expires_at && next.duration_since(current_expires_at) >= self.touch_after)
            .then_some(next)
    }

    /// The `expires_at` a write at `now` stores: `explicit` if the application set one,
    /// otherwise the later of `current` and the rolled idle expiry (a write never shortens a
    /// session by itself); in both cases capped at the absolute deadline.
    ///
    /// ```
    /// use coatcheck::core::{ExpiryPolicy, Timestamp};
    /// use std::time::Duration;
    ///
    /// let p = ExpiryPolicy::new(Duration::from_secs(100)).with_absolute_timeout(Some(Duration::from_secs(150)));
    /// let t = |s: i64| Timestamp::from_millis(s * 1000);
    /// assert_eq!(p.on_write(t(0), t(100), None, t(10)), t(110));
    /// assert_eq!(p.on_write(t(0), t(500), None, t(10)), t(150), "capped");
    /// assert_eq!(p.on_write(t(0), t(100), Some(t(20)), t(10)), t(20), "explicit wins");
    /// ```
    pub fn on_write(
        &self,
        created_at: Timestamp,
        current: Timestamp,
        explicit: Option<Timestamp>,
        now: Timestamp,
    ) -> Timestamp {
        let t = explicit.unwrap_or_else(|| current.max(self.expires_at(created_at, now)));
        match self.absolute_deadline(created_at) {
            Some(deadline) => t.min(deadline),
            None => t,
        }
    }

    /// What the cookie's `Expires` should say: `None` for a browser-session cookie.
    pub fn cookie_expires(&self, expires_at: Timestamp) -> Option<Timestamp> {
        (!self.browser_session).then_some(expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn t(s: i64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    #[test]
    fn idle_rolls() {
        let p = ExpiryPolicy::new(100 * S);
        assert_eq!(p.expires_at(t(0), t(0)), t(100));
        assert_eq!(p.expires_at(t(0), t(50)), t(150));
    }

    #[test]
    fn absolute_caps_and_is_not_extended() {
        let p = ExpiryPolicy::new(100 * S).with_absolute_timeout(Some(300 * S));
        assert_eq!(p.expires_at(t(0), t(250)), t(300));
        assert_eq!(p.expires_at(t(0), t(1000)), t(300));
        assert_eq!(p.touch_due(t(0), t(300), t(290)), None);
    }

    #[test]
    fn touch_due_respects_touch_after() {
        let p = ExpiryPolicy::new(100 * S).with_touch_after(10 * S);
        assert_eq!(p.touch_due(t(0), t(100), t(9)), None);
        assert_eq!(p.touch_due(t(0), t(100), t(10)), Some(t(110)));
        let every = p.with_touch_after(Duration::ZERO);
        assert_eq!(
            every.touch_due(t(0), t(100), t(0)),
            None,
            "no change, no touch"
        );
        assert_eq!(
            every.touch_due(t(0), t(100), Timestamp::from_millis(1)),
            Some(Timestamp::from_millis(100_001))
        );
    }

    #[test]
    fn default_touch_after_is_bounded_by_idle() {
        assert_eq!(ExpiryPolicy::new(10 * S).touch_after, 5 * S);
        assert_eq!(ExpiryPolicy::new(3600 * S).touch_after, 60 * S);
    }

    #[test]
    fn browser_session_cookie_has_no_expires() {
        let p = ExpiryPolicy::new(100 * S).with_browser_session(true);
        assert_eq!(p.cookie_expires(t(5)), None);
        assert_eq!(ExpiryPolicy::new(S).cookie_expires(t(5)), Some(t(5)));
    }
}
