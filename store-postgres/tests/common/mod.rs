//! Helpers shared by the integration tests: each test gets its own schema on the server
//! from `DATABASE_URL` (or testcontainers), dropped when the test's store is dropped.
#![allow(dead_code)]

use std::time::Duration;

use coatcheck_conformance::kit::{StoreWrapper, Wrapped};
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::SessionStore;
use coatcheck_postgres::{PostgresStore, PostgresStoreBuilder};
use sqlx::Connection as _;

/// The server's URL; the tests that call this have checked `harness::require` first.
pub async fn url() -> String {
    harness::url(Backend::Postgres)
        .await
        .expect("checked by harness::require")
}

/// A store on its own fresh schema (table `sessions`), migrated; the schema is dropped with
/// the store.
pub async fn scoped_store() -> Scoped {
    scoped_with(PostgresStore::builder()).await
}

/// Like [`scoped_store`] with a builder's settings (schema and table are overridden).
pub async fn scoped_with(builder: PostgresStoreBuilder) -> Scoped {
    let url = url().await;
    let schema = harness::unique_name("cc");
    let store = builder
        .schema(&schema)
        .table("sessions")
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&url)
        .expect("valid config");
    store.migrate().await.expect("migrate");
    Wrapped(InSchema {
        store,
        guard: SchemaGuard { url, schema },
    })
}

/// A store pointed at a closed port, answering fast.
pub async fn unreachable_store() -> PostgresStore {
    PostgresStore::builder()
        .table(harness::unique_name("cc"))
        .acquire_timeout(Duration::from_millis(1500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/x")
        .expect("valid config")
}

/// A store on a schema of its own (table `sessions`) that `migrate` has not run on, for a
/// test that first builds a table of an earlier layout there; the guard drops the schema.
pub async fn unmigrated_store(prefix: &str) -> (PostgresStore, SchemaGuard) {
    let url = url().await;
    let schema = harness::unique_name(prefix);
    let store = PostgresStore::builder()
        .schema(&schema)
        .table("sessions")
        .connect_lazy(&url)
        .expect("config");
    (store, SchemaGuard { url, schema })
}

/// An empty session's `data` as the native codec writes it, in hex (for `'\x…'` literals).
pub fn empty_data_hex() -> String {
    coatcheck_core::Codec::encode(&coatcheck_core::NativeCodec, &Default::default())
        .expect("encode")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Drops its schema (CASCADE) when dropped, even while a failing test unwinds.
#[derive(Debug)]
pub struct SchemaGuard {
    pub url: String,
    pub schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with
        // a runtime of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::raw_sql(&sql)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                conn.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) | Err(e) = done.map_err(|_| "cleanup thread panicked".to_string()) {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// A real [`PostgresStore`] whose schema is dropped when it is.
pub type Scoped = Wrapped<InSchema>;

/// A [`PostgresStore`] and the guard that drops its schema.
#[derive(Debug)]
pub struct InSchema {
    pub store: PostgresStore,
    pub guard: SchemaGuard,
}

impl std::ops::Deref for InSchema {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

impl StoreWrapper for InSchema {
    fn inner(&self) -> &dyn SessionStore {
        &self.store
    }
}
