//! Round trips per request, counted on the wire side of each driver, not guessed:
//! Redis by the server's `MONITOR` stream (client commands only), Postgres by sqlx's per-statement
//! `sqlx::query` events, MongoDB by the driver's command-started events; plus the
//! `SessionStore` calls the middleware made, through a counting wrapper.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use coatcheck_conformance::kit::{Call, StoreWrapper, Wrapped};
use coatcheck_core::{SessionStore, StoreError};
use futures_util::future::BoxFuture;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::http_level::{coatcheck_router, Http};
use crate::store_level::{lean_pg_pool, unique};
use crate::{BoxErr, Settings};

static COUNTING: AtomicBool = AtomicBool::new(false);
static PG_STATEMENTS: AtomicU64 = AtomicU64::new(0);
static MONGO_COMMANDS: AtomicU64 = AtomicU64::new(0);

/// Counts sqlx's statement events, only while counting is switched on.
struct SqlxStatements;

impl<S: Subscriber> Layer<S> for SqlxStatements {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if m.target() == "sqlx::query" {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }
    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        m.target() == "sqlx::query" && COUNTING.load(Ordering::Relaxed)
    }
    fn on_event(&self, e: &Event<'_>, _: Context<'_, S>) {
        if e.metadata().target() == "sqlx::query" {
            PG_STATEMENTS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn install() {
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(SqlxStatements),
    );
}

/// Counts the `SessionStore` calls the middleware makes.
#[derive(Debug)]
struct Calls {
    inner: Arc<dyn SessionStore>,
    n: AtomicU64,
}

impl Calls {
    fn tick(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
    }
}

impl StoreWrapper for Calls {
    fn inner(&self) -> &dyn SessionStore {
        &*self.inner
    }
    fn around<'a, T: Send + 'a>(
        &'a self,
        what: Call,
        call: BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        // The middleware never cleans up: `delete_expired` is the application's call.
        if what != Call::DeleteExpired {
            self.tick();
        }
        call
    }
}

/// How a backend's round trips are read.
pub(crate) enum Wire {
    None,
    /// Top-level commands seen by `MONITOR` (commands a Lua script runs inside the server
    /// are shown as `[0 lua]` and are not round trips): the server's URL, and the
    /// `MONITOR` connection while counting.
    Redis(
        String,
        Option<(Arc<AtomicU64>, tokio::task::JoinHandle<()>)>,
    ),
    /// sqlx's per-statement events (Postgres, MySQL, SQLite).
    Sqlx,
    Mongo,
}

/// Starts a MONITOR connection counting client commands (not those run inside scripts).
async fn redis_monitor(url: &str) -> Result<(Arc<AtomicU64>, tokio::task::JoinHandle<()>), BoxErr> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .ok_or("bad REDIS_URL")?
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.write_all(b"MONITOR\r\n").await?;
    let mut lines = BufReader::new(stream).lines();
    let ok = lines.next_line().await?.ok_or("MONITOR closed")?;
    if !ok.starts_with("+OK") {
        return Err(format!("MONITOR answered {ok}").into());
    }
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if COUNTING.load(Ordering::SeqCst) && !line.contains(" lua] ") {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Ok((count, task))
}

/// A MongoDB client whose command-started events are counted while counting is on.
pub(crate) async fn counted_mongo_client(url: &str) -> Result<mongodb::Client, BoxErr> {
    use mongodb::event::command::CommandEvent;
    use mongodb::event::EventHandler;
    let mut opts = mongodb::options::ClientOptions::parse(url).await?;
    opts.command_event_handler = Some(EventHandler::callback(|ev: CommandEvent| {
        if matches!(ev, CommandEvent::Started(_)) && COUNTING.load(Ordering::Relaxed) {
            MONGO_COMMANDS.fetch_add(1, Ordering::Relaxed);
        }
    }));
    Ok(mongodb::Client::with_options(opts)?)
}

impl Wire {
    /// Counting on (for Redis: a `MONITOR` connection opens, which slows the server down:
    /// never while a time is taken).
    pub(crate) async fn start(&mut self) -> Result<(), BoxErr> {
        if let Wire::Redis(url, monitor @ None) = self {
            *monitor = Some(redis_monitor(url).await?);
        }
        COUNTING.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Counting off (the `MONITOR` connection closed).
    pub(crate) fn stop(&mut self) {
        COUNTING.store(false, Ordering::SeqCst);
        if let Wire::Redis(_, monitor) = self {
            if let Some((_, task)) = monitor.take() {
                task.abort();
            }
        }
    }

    /// The round trips counted so far; `None` in process (no wire).
    pub(crate) async fn read(&mut self) -> Result<Option<u64>, BoxErr> {
        Ok(match self {
            Wire::None => None,
            Wire::Redis(_, monitor) => {
                let (count, _) = monitor.as_ref().ok_or("counting was not started")?;
                // MONITOR lines arrive asynchronously; let them drain.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                Some(count.load(Ordering::SeqCst))
            }
            Wire::Sqlx => Some(PG_STATEMENTS.load(Ordering::SeqCst)),
            Wire::Mongo => Some(MONGO_COMMANDS.load(Ordering::SeqCst)),
        })
    }
}

async fn measure(
    backend: &str,
    store: Arc<dyn SessionStore>,
    mut wire: Wire,
) -> Result<(), BoxErr> {
    const K: u64 = 20;
    let calls = Arc::new(Wrapped(Calls {
        inner: store,
        n: AtomicU64::new(0),
    }));
    let router = coatcheck_router(calls.clone())?;
    let cookie = Http::send(&router, "POST", "/incr", None)
        .await?
        .ok_or("no cookie")?;
    let cases: [(&str, &str, &str, bool); 4] = [
        ("never touches the session", "GET", "/none", true),
        ("reads (no touch due)", "GET", "/read", true),
        ("writes (update counter)", "POST", "/incr", true),
        ("first write, new session", "POST", "/incr", false),
    ];
    for (what, method, uri, with_cookie) in cases {
        wire.start().await?;
        let c0 = calls.n.load(Ordering::SeqCst);
        let w0 = wire.read().await?;
        for _ in 0..K {
            Http::send(&router, method, uri, with_cookie.then_some(cookie.as_str())).await?;
        }
        let w1 = wire.read().await?;
        let c1 = calls.n.load(Ordering::SeqCst);
        COUNTING.store(false, Ordering::SeqCst);
        let wire_per = match (w0, w1) {
            (Some(w0), Some(w1)) => format!("{:.2}", (w1 - w0) as f64 / K as f64),
            _ => "— (in process)".to_owned(),
        };
        println!(
            "| {backend} | {what} | {:.2} | {wire_per} |",
            (c1 - c0) as f64 / K as f64
        );
    }
    wire.stop();
    Ok(())
}

pub async fn round_trips(s: &Settings) -> Result<(), BoxErr> {
    println!("## Round trips per request (coatcheck middleware, counted)\n");
    println!("| backend | request | store calls | backend round trips |\n|---|---|---:|---:|");
    if s.wants("memory") {
        measure(
            "memory",
            Arc::new(coatcheck_memory::MemoryStore::new()),
            Wire::None,
        )
        .await?;
    }
    if let (true, Some(url)) = (s.wants("redis"), &s.redis_url) {
        let store = coatcheck_redis::RedisStore::builder()
            .prefix(format!("{}:", unique("benchrt")))
            .connect(url)
            .await?;
        measure("redis", Arc::new(store), Wire::Redis(url.clone(), None)).await?;
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let table = unique("benchrt");
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(table.clone())
            .build(lean_pg_pool(url, 4).await?)?;
        store.migrate().await?;
        measure("postgres", Arc::new(store.clone()), Wire::Sqlx).await?;
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(store.pool())
            .await?;
    }
    if let (true, Some(url)) = (s.wants("mongo"), &s.mongodb_url) {
        let client = counted_mongo_client(url).await?;
        let store = coatcheck_mongo::MongoStore::builder(&client, "coatcheck_bench")
            .collection(unique("benchrt"))
            .build_with_indexes()
            .await?;
        measure("mongo", Arc::new(store.clone()), Wire::Mongo).await?;
        let _ = store.collection().drop().await;
    }
    println!();
    Ok(())
}
