//! Helpers shared by the integration tests: each test gets a database file of its own in
//! the system's temporary directory, removed (with its WAL and shared-memory files) with
//! the store.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use coatcheck_conformance::harness;
use coatcheck_conformance::kit::{StoreWrapper, Wrapped};
use coatcheck_core::SessionStore;
use coatcheck_sqlite::{SqliteStore, SqliteStoreBuilder};

/// A fresh database file's path (not created yet) and the guard that removes it.
pub fn fresh_file(base: &str) -> FileGuard {
    let path = std::env::temp_dir().join(format!("{}.db", harness::unique_name(base)));
    FileGuard { path }
}

/// The sqlx URL of a file, created when missing.
pub fn url_of(file: &FileGuard) -> String {
    format!("sqlite://{}?mode=rwc", file.path.display())
}

/// A store on a fresh file of its own, migrated; the file goes with the store.
pub async fn scoped_store() -> Scoped {
    scoped_with(SqliteStore::builder()).await
}

/// Like [`scoped_store`] with a builder's settings.
pub async fn scoped_with(builder: SqliteStoreBuilder) -> Scoped {
    let file = fresh_file("cc");
    let store = builder
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&url_of(&file))
        .expect("valid config");
    store.migrate().await.expect("migrate");
    Wrapped(InFile { store, file })
}

/// A store on a file in a directory that does not exist: every operation fails to open it.
pub async fn unreachable_store() -> SqliteStore {
    SqliteStore::builder()
        .acquire_timeout(Duration::from_millis(1500))
        .connect_lazy("sqlite:///nonexistent-coatcheck-dir/sessions.db?mode=rwc")
        .expect("valid config")
}

/// Removes a database file and its `-wal` and `-shm` companions when dropped, even while a
/// test unwinds.
#[derive(Debug)]
pub struct FileGuard {
    pub path: PathBuf,
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A store and the guard of its file.
#[derive(Debug)]
pub struct InFile {
    pub store: SqliteStore,
    pub file: FileGuard,
}

impl StoreWrapper for InFile {
    fn inner(&self) -> &dyn SessionStore {
        &self.store
    }
}

/// The scoped store as the suite sees it: every call forwarded.
pub type Scoped = Wrapped<InFile>;
