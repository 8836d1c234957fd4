//! A store around another store, forwarding every call unless told otherwise.

use std::fmt;

use async_trait::async_trait;
use coatcheck_core::{
    Capabilities, Record, SessionId, SessionInfo, SessionLimit, SessionStore, StoreError, Timestamp,
};
use futures_util::future::BoxFuture;

/// Which [`SessionStore`] method a call is, as [`StoreWrapper::around`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Call {
    /// [`SessionStore::create`].
    Create,
    /// [`SessionStore::load`].
    Load,
    /// [`SessionStore::save`].
    Save,
    /// [`SessionStore::touch`].
    Touch,
    /// [`SessionStore::delete`].
    Delete,
    /// [`SessionStore::delete_version`].
    DeleteVersion,
    /// [`SessionStore::list_for_user`].
    ListForUser,
    /// [`SessionStore::delete_for_user`].
    DeleteForUser,
    /// [`SessionStore::delete_device`].
    DeleteDevice,
    /// [`SessionStore::create_limited`].
    CreateLimited,
    /// [`SessionStore::delete_expired`].
    DeleteExpired,
    /// [`SessionStore::load_listed`].
    LoadListed,
}

impl Call {
    /// The method's name (`"create"`, `"delete_for_user"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Call::Create => "create",
            Call::Load => "load",
            Call::Save => "save",
            Call::Touch => "touch",
            Call::Delete => "delete",
            Call::DeleteVersion => "delete_version",
            Call::ListForUser => "list_for_user",
            Call::DeleteForUser => "delete_for_user",
            Call::DeleteDevice => "delete_device",
            Call::CreateLimited => "create_limited",
            Call::DeleteExpired => "delete_expired",
            Call::LoadListed => "load_listed",
        }
    }

    /// Every call, in the trait's order.
    pub const ALL: [Call; 12] = [
        Call::Create,
        Call::Load,
        Call::Save,
        Call::Touch,
        Call::Delete,
        Call::DeleteVersion,
        Call::ListForUser,
        Call::DeleteForUser,
        Call::DeleteDevice,
        Call::CreateLimited,
        Call::DeleteExpired,
        Call::LoadListed,
    ];
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A store wrapper: say which store is inside ([`inner`](StoreWrapper::inner)), override
/// what you change, and wrap it in [`Wrapped`] to get a [`SessionStore`].
///
/// Every method forwards to the inner store through [`around`](StoreWrapper::around) by
/// default, so a wrapper that acts on every call (pauses, counts, fails while "down")
/// overrides `around` alone, and one that changes one call overrides that call alone.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use coatcheck::memory::MemoryStore;
/// use coatcheck::{SessionStore, StoreError};
/// use coatcheck_conformance::kit::{Call, StoreWrapper, Wrapped};
/// use futures_util::future::BoxFuture;
///
/// /// Counts the calls that reach the store.
/// #[derive(Debug, Default)]
/// struct Counting {
///     inner: MemoryStore,
///     calls: AtomicU64,
/// }
///
/// impl StoreWrapper for Counting {
///     fn inner(&self) -> &dyn SessionStore {
///         &self.inner
///     }
///     fn around<'a, T: Send + 'a>(
///         &'a self,
///         _call: Call,
///         call: BoxFuture<'a, Result<T, StoreError>>,
///     ) -> BoxFuture<'a, Result<T, StoreError>> {
///         self.calls.fetch_add(1, Ordering::Relaxed);
///         call
///     }
/// }
///
/// # tokio_test();
/// # fn tokio_test() {
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let store = Wrapped(Counting::default());
/// let id = coatcheck::SessionId::generate();
/// assert!(store.load(&id).await?.is_none());
/// assert_eq!(store.calls.load(Ordering::Relaxed), 1);
/// # Ok::<(), StoreError>(())
/// # }).unwrap();
/// # }
/// ```
#[async_trait]
pub trait StoreWrapper: Send + Sync + fmt::Debug + 'static {
    /// The store every call goes to unless overridden.
    fn inner(&self) -> &dyn SessionStore;

    /// Runs every forwarded call: `call` is the inner store's future. The default awaits
    /// it unchanged; a wrapper may act before and after it, or answer without it.
    fn around<'a, T: Send + 'a>(
        &'a self,
        what: Call,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        let _ = what;
        call
    }

    /// [`SessionStore::create`].
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        self.around(Call::Create, self.inner().create(record)).await
    }
    /// [`SessionStore::load`].
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        self.around(Call::Load, self.inner().load(id)).await
    }
    /// [`SessionStore::save`].
    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        self.around(Call::Save, self.inner().save(record)).await
    }
    /// [`SessionStore::touch`].
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.around(Call::Touch, self.inner().touch(id, expires_at))
            .await
    }
    /// [`SessionStore::delete`].
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.around(Call::Delete, self.inner().delete(id)).await
    }
    /// [`SessionStore::delete_version`].
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        self.around(
            Call::DeleteVersion,
            self.inner().delete_version(id, version),
        )
        .await
    }
    /// [`SessionStore::list_for_user`].
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        self.around(Call::ListForUser, self.inner().list_for_user(user_id))
            .await
    }
    /// [`SessionStore::delete_for_user`].
    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        self.around(
            Call::DeleteForUser,
            self.inner().delete_for_user(user_id, except),
        )
        .await
    }
    /// [`SessionStore::delete_device`].
    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        self.around(
            Call::DeleteDevice,
            self.inner().delete_device(user_id, handle),
        )
        .await
    }
    /// [`SessionStore::create_limited`].
    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.around(
            Call::CreateLimited,
            self.inner().create_limited(record, limit),
        )
        .await
    }
    /// [`SessionStore::delete_expired`].
    async fn delete_expired(&self) -> Result<u64, StoreError> {
        self.around(Call::DeleteExpired, self.inner().delete_expired())
            .await
    }
    /// [`SessionStore::load_listed`].
    async fn load_listed(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        self.around(Call::LoadListed, self.inner().load_listed(id))
            .await
    }
    /// [`SessionStore::capabilities`].
    fn capabilities(&self) -> Capabilities {
        self.inner().capabilities()
    }
    /// [`SessionStore::stored_id`].
    fn stored_id(&self, id: &SessionId) -> SessionId {
        self.inner().stored_id(id)
    }
}

/// A [`StoreWrapper`] as a [`SessionStore`]. Derefs to the wrapper, so its own fields and
/// methods (counters, switches) stay at hand.
#[derive(Debug, Default, Clone)]
pub struct Wrapped<W>(pub W);

impl<W> std::ops::Deref for Wrapped<W> {
    type Target = W;
    fn deref(&self) -> &W {
        &self.0
    }
}

#[async_trait]
impl<W: StoreWrapper> SessionStore for Wrapped<W> {
    async fn create(&self, record: &Record) -> Result<(), StoreError> {
        self.0.create(record).await
    }
    async fn load(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        self.0.load(id).await
    }
    async fn save(&self, record: &Record) -> Result<u64, StoreError> {
        self.0.save(record).await
    }
    async fn touch(&self, id: &SessionId, expires_at: Timestamp) -> Result<bool, StoreError> {
        self.0.touch(id, expires_at).await
    }
    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.0.delete(id).await
    }
    async fn delete_version(&self, id: &SessionId, version: u64) -> Result<(), StoreError> {
        self.0.delete_version(id, version).await
    }
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<SessionInfo>, StoreError> {
        self.0.list_for_user(user_id).await
    }
    async fn delete_for_user(
        &self,
        user_id: &str,
        except: Option<&SessionId>,
    ) -> Result<u64, StoreError> {
        self.0.delete_for_user(user_id, except).await
    }
    async fn delete_device(&self, user_id: &str, handle: &str) -> Result<bool, StoreError> {
        self.0.delete_device(user_id, handle).await
    }
    async fn create_limited(
        &self,
        record: &Record,
        limit: SessionLimit,
    ) -> Result<u64, StoreError> {
        self.0.create_limited(record, limit).await
    }
    async fn delete_expired(&self) -> Result<u64, StoreError> {
        self.0.delete_expired().await
    }
    async fn load_listed(&self, id: &SessionId) -> Result<Option<Record>, StoreError> {
        self.0.load_listed(id).await
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn stored_id(&self, id: &SessionId) -> SessionId {
        self.0.stored_id(id)
    }
}
