//! Helpers shared by the integration tests: each test gets its own table (and lock table)
//! in the database at `MYSQL_URL` (or a testcontainers MariaDB), dropped with the store.
#![allow(dead_code)]

use std::time::Duration;

use coatcheck_conformance::kit::{StoreWrapper, Wrapped};
use coatcheck_conformance::{harness, Backend};
use coatcheck_core::SessionStore;
use coatcheck_mysql::{MySqlStore, MySqlStoreBuilder};
use sqlx::Connection as _;

/// An hour, the tests' usual time to live.
pub const HOUR: Duration = Duration::from_secs(3600);

/// Returns from the test (after a visible skip) when there is no MySQL server, unless
/// `COATCHECK_REQUIRE_BACKENDS` requires it (then it fails).
#[macro_export]
macro_rules! require_mysql {
    () => {
        if !coatcheck_conformance::harness::require(Some(coatcheck_conformance::Backend::Mysql))
            .await
        {
            return;
        }
    };
}

/// A live record expiring `ttl` after `now`, with one value.
pub fn record_at(now: coatcheck_core::Timestamp, ttl: Duration) -> coatcheck_core::Record {
    let mut r = coatcheck_core::Record::new(coatcheck_core::SessionId::generate(), now, now + ttl);
    r.data.insert("views".into(), serde_json::json!(1));
    r
}

/// The server's URL; the tests that call this have checked `harness::require` first.
pub async fn url() -> String {
    harness::url(Backend::Mysql)
        .await
        .expect("checked by harness::require")
}

/// A store on a fresh table of its own, migrated; its tables are dropped with the store.
pub async fn scoped_store() -> Scoped {
    scoped_with(MySqlStore::builder()).await
}

/// Like [`scoped_store`] with a builder's settings (the table is overridden).
pub async fn scoped_with(builder: MySqlStoreBuilder) -> Scoped {
    let url = url().await;
    let table = harness::unique_name("cc");
    let store = builder
        .table(&table)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&url)
        .expect("valid config");
    store.migrate().await.expect("migrate");
    Wrapped(InTable {
        store,
        guard: TableGuard { url, table },
    })
}

/// A store pointed at a closed port, answering fast.
pub async fn unreachable_store() -> MySqlStore {
    MySqlStore::builder()
        .acquire_timeout(Duration::from_millis(1500))
        .connect_lazy("mysql://root@127.0.0.1:1/x")
        .expect("valid config")
}

/// Runs `sql` on a connection of its own, from a thread with a runtime of its own (so it
/// works inside `Drop`, where the test's runtime cannot be blocked on).
pub fn admin(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut conn = sqlx::MySqlConnection::connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(&sql)
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            conn.close().await.map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_owned())?
}

/// Drops the test's table and its lock table when dropped, even while a test unwinds.
#[derive(Debug)]
pub struct TableGuard {
    pub url: String,
    pub table: String,
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS `{t}`, `{t}_locks`", t = self.table);
        if let Err(e) = admin(&self.url, sql) {
            eprintln!("could not drop test table {}: {e}", self.table);
        }
    }
}

/// A store and the guard of its table.
#[derive(Debug)]
pub struct InTable {
    pub store: MySqlStore,
    pub guard: TableGuard,
}

impl StoreWrapper for InTable {
    fn inner(&self) -> &dyn SessionStore {
        &self.store
    }
}

/// The scoped store as the suite sees it: every call forwarded.
pub type Scoped = Wrapped<InTable>;

/// A TCP relay in front of the server whose [`cut`](Relay::cut) closes every connection it
/// carries without a word, as the server does to a connection idle past its
/// `wait_timeout` (MariaDB sends no error packet then); new connections go through.
pub struct Relay {
    pub port: u16,
    open: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays `127.0.0.1:<port>` to the server of `url` (`mysql://user@host:port/db`).
    pub async fn start(url: &str) -> Relay {
        let after_at = url.split_once('@').map_or(url, |(_, rest)| rest);
        let upstream = after_at.split('/').next().expect("host:port").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = open.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().expect("relay tasks").push(task.abort_handle());
            }
        });
        Relay { port, open, accept }
    }

    /// `url` with its `host:port` replaced by the relay's.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("user@host");
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        format!("{scheme_user}@127.0.0.1:{}/{path}", self.port)
    }

    /// Closes every connection relayed so far (both of its sockets dropped).
    pub fn cut(&self) {
        for task in self.open.lock().expect("relay tasks").drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
