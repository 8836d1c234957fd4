#![cfg_attr(docsrs, feature(doc_cfg))]
//! # coatcheck-core
//!
//! The I/O-free heart of coatcheck: the [`Record`] a store keeps, the [`SessionId`],
//! time ([`Timestamp`], [`Clock`]), the [`ExpiryPolicy`], cookie signing with key rotation
//! ([`KeyRing`], express-session's cookie format), value codecs ([`NativeCodec`],
//! [`JsonCodec`], [`EncryptedCodec`] for data encrypted at rest) and the [`SessionStore`] trait every store implements.
//!
//! ```
//! use coatcheck::core::{KeyRing, SessionId};
//!
//! let ring = KeyRing::new(["a secret of at least thirty-two bytes!!"]).unwrap();
//! let id = SessionId::generate();
//! let cookie = ring.sign_cookie_value(&id);
//! assert_eq!(ring.verify_cookie_value(&cookie).unwrap().id, id);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "cleanup")]
#[cfg_attr(docsrs, doc(cfg(feature = "cleanup")))]
pub mod cleanup;
mod codec;
mod device;
mod encrypted;
mod error;
mod expiry;
mod express;
mod hashed;
mod id;
pub mod keys;
mod notice;
mod options;
mod record;
mod signing;
mod store;
mod time;

pub use codec::{Codec, EncodeError, JsonCodec, NativeCodec, MAX_DEPTH, NATIVE_FORMAT_V1};
pub use device::{Device, DeviceHandle, LimitPolicy, SessionLimit, MAX_USER_AGENT_LEN};
pub use encrypted::{DataKeyError, DataKeys, EncryptedCodec, ENCRYPTED_FORMAT_V1, REWRITE_KEY};
pub use error::{BoxError, DecodeError, StoreError};
pub use expiry::ExpiryPolicy;
pub use express::{
    content_version, express_principal, is_express_reserved, ExpressFormat, ExpressMaxAge,
    ExpressSession, EXPRESS_RESERVED_KEYS,
};
pub use hashed::{hashed_key, HashedIds, HashedIdsError, HASHED_KEY_LEN};
pub use id::{InvalidSessionId, SessionId};
pub use notice::ExpiryNotice;
pub use options::{OptionsConflict, StoreOptions};
pub use record::{Data, Record, SessionInfo};
pub use signing::{KeyRing, KeyRingError, Verified, MIN_SECRET_LEN};
pub use store::{Capabilities, SessionStore};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
