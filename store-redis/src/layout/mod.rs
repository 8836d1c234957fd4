//! The two ways sessions are laid out in Redis: coatcheck's own hash per session with a
//! per-user index (`native`), and connect-redis's string of express-session JSON
//! (`express`).

pub(crate) mod express;
pub(crate) mod native;
