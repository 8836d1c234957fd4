//! [`StoreOptions`]: what every store builder takes, one type with one set of names.

use std::fmt;
use std::sync::Arc;

use crate::{Clock, Codec, ExpressFormat, NativeCodec, SystemClock};

/// The options every coatcheck store shares: the codec of the session data, the clock that
/// decides liveness, and the express-session layout. Every store builder has the same three
/// setters (`codec`, `clock`, `express`) and takes a whole set with `options`, so one
/// configuration moves between stores unchanged; each refuses the same conflicts the same
/// way ([`StoreOptions::validate`]).
///
/// Timeouts are not here on purpose: what a store can bound differs by backend (Redis an
/// operation, Postgres the wait for a pooled connection, MongoDB server selection), so each
/// builder names its own; the middleware's `store_timeout` bounds every call the same way
/// whatever the store.
///
/// ```
/// use coatcheck::core::{JsonCodec, StoreOptions, SystemClock};
///
/// let options = StoreOptions::new().codec(JsonCodec).clock(SystemClock);
/// assert!(options.validate().is_ok());
/// // RedisStore::builder().options(options.clone()), PostgresStore::builder().options(..), ...
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// How session data becomes bytes; default [`NativeCodec`]. Ignored by an express
    /// layout (express-session's JSON), which refuses an encrypting codec.
    pub codec: Arc<dyn Codec>,
    /// Where "now" comes from; default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// Store sessions in express-session's layout (for an Express app sharing them);
    /// default `None`, coatcheck's own.
    pub express: Option<ExpressFormat>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            codec: Arc::new(NativeCodec),
            clock: Arc::new(SystemClock),
            express: None,
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("codec", &self.codec)
            .field("clock", &self.clock)
            .field("express", &self.express)
            .finish()
    }
}

impl StoreOptions {
    /// The defaults: [`NativeCodec`], [`SystemClock`], coatcheck's own layout.
    pub fn new() -> Self {
        StoreOptions::default()
    }

    /// Sets [`StoreOptions::codec`].
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Sets [`StoreOptions::clock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets [`StoreOptions::express`].
    pub fn express(mut self, format: ExpressFormat) -> Self {
        self.express = Some(format);
        self
    }

    /// Refuses what no store can honour: an encrypting codec with the express layout (Node
    /// reads the stored JSON as it is). Every store builder calls it before building.
    ///
    /// ```
    /// use coatcheck::core::{DataKeys, EncryptedCodec, ExpressFormat, OptionsConflict, StoreOptions};
    ///
    /// let keys = DataKeys::new([[7u8; 32]]).unwrap();
    /// let options = StoreOptions::new()
    ///     .codec(EncryptedCodec::new(keys))
    ///     .express(ExpressFormat::new());
    /// assert_eq!(options.validate(), Err(OptionsConflict::EncryptedExpress));
    /// ```
    pub fn validate(&self) -> Result<(), OptionsConflict> {
        if self.express.is_some() && self.codec.encrypts() {
            return Err(OptionsConflict::EncryptedExpress);
        }
        Ok(())
    }
}

/// Options that cannot go together ([`StoreOptions::validate`]); each store's build error
/// has the same variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsConflict {
    /// An encrypting codec with the express layout: Node reads the data as plain JSON.
    #[error("express-compatible mode stores express-session's JSON and cannot encrypt it; drop the encrypting codec or the express format")]
    EncryptedExpress,
}
