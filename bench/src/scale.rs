//! How cost grows with the work (`--part scale`): one user's sessions (list, log out
//! everywhere) at 1 to 1,000 sessions, `delete_expired` over 10^4 to 10^6 expired rows with
//! live traffic beside it, bytes per session next to tower-sessions' for the same data, and
//! load + save as the store fills up to 10^6 live sessions (`scale_live`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coatcheck_core::{Record, SessionId, SessionStore, Timestamp};

use crate::count::{self, Wire};
use crate::scale_live::{copy_rows, Fill};
use crate::sql_stores::{mysql_pool, SqliteFile};
use crate::store_level::{fred_pool, lean_pg_pool, sample_data, unique, Coatcheck, Tower};
use crate::{BoxErr, Rng, Settings, Work};

/// One store under test, and what its fixture holds (a file, a table to drop).
pub(crate) struct Subject {
    pub(crate) name: &'static str,
    pub(crate) store: Arc<dyn SessionStore>,
    wire: Wire,
    /// How the fixture adds many sessions at once.
    pub(crate) fill: Fill,
    /// The SQLite file, removed when dropped.
    _file: Option<SqliteFile>,
}

async fn subjects(s: &Settings) -> Result<Vec<Subject>, BoxErr> {
    let mut out = Vec::new();
    let subject = |name, store: Arc<dyn SessionStore>, wire, fill| Subject {
        name,
        store,
        wire,
        fill,
        _file: None,
    };
    if s.wants("memory") {
        let store = coatcheck_memory::MemoryStore::new();
        out.push(subject("memory", Arc::new(store), Wire::None, Fill::Create));
    }
    for (name, url) in [("redis", &s.redis_url), ("valkey", &s.valkey_url)] {
        if let (true, Some(url)) = (s.wants(name), url) {
            let prefix = format!("{}:", unique("benchscale"));
            let store = coatcheck_redis::RedisStore::builder()
                .prefix(prefix.clone())
                .connect(url)
                .await?;
            let fill = Fill::Redis {
                url: url.clone(),
                prefix,
            };
            out.push(subject(
                name,
                Arc::new(store),
                Wire::Redis(url.clone(), None),
                fill,
            ));
        }
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let table = unique("benchscale");
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(table.clone())
            .build(lean_pg_pool(url, 16).await?)?;
        store.migrate().await?;
        let fill = Fill::Sql {
            sql: Sql::Postgres(store.pool().clone()),
            kind: "postgres",
            table,
        };
        out.push(subject("postgres", Arc::new(store), Wire::Sqlx, fill));
    }
    if let (true, Some(url)) = (s.wants("mongo"), &s.mongodb_url) {
        let client = count::counted_mongo_client(url).await?;
        let store = coatcheck_mongo::MongoStore::builder(&client, "coatcheck_bench")
            .collection(unique("benchscale"))
            .build_with_indexes()
            .await?;
        out.push(subject("mongo", Arc::new(store), Wire::Mongo, Fill::Create));
    }
    if let (true, Some(url)) = (s.wants("mysql"), &s.mysql_url) {
        let table = unique("benchscale");
        let store = coatcheck_mysql::MySqlStore::builder()
            .table(table.clone())
            .build(mysql_pool(url)?)?;
        store.migrate().await?;
        let fill = Fill::Sql {
            sql: Sql::Mysql(store.pool().clone()),
            kind: "mysql",
            table,
        };
        out.push(subject("mysql", Arc::new(store), Wire::Sqlx, fill));
    }
    if s.wants("sqlite") {
        let (file, table) = (SqliteFile::new("benchscale"), unique("benchscale"));
        let store = coatcheck_sqlite::SqliteStore::builder()
            .table(table.clone())
            .connect_lazy(&file.url())?;
        store.migrate().await?;
        let fill = Fill::Sql {
            sql: Sql::Sqlite(store.pool().clone()),
            kind: "sqlite",
            table,
        };
        out.push(Subject {
            name: "sqlite",
            store: Arc::new(store),
            wire: Wire::Sqlx,
            fill,
            _file: Some(file),
        });
    }
    Ok(out)
}

pub async fn run(s: &Settings) -> Result<(), BoxErr> {
    println!("## How cost grows (#30)\n");
    user_sessions(s).await?;
    cleanup(s).await?;
    bytes_per_session(s).await?;
    Ok(())
}

/// Load + save as the store fills up (`--part live`), on fresh subjects.
pub async fn live(s: &Settings) -> Result<(), BoxErr> {
    crate::scale_live::live_growth(s, subjects(s).await?).await
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `n` live sessions of `user`, each with the sample data.
async fn sessions_of(store: &dyn SessionStore, user: &str, n: usize) -> Result<(), BoxErr> {
    let now = Timestamp::now();
    for i in 0..n {
        let mut r = Record::new(SessionId::generate(), now, now + Duration::from_secs(3600));
        r.data = sample_data(i);
        r.user_id = Some(user.to_owned());
        store.create(&r).await?;
    }
    Ok(())
}

type Axes = (&'static str, &'static str, &'static str);
const LIST: Axes = (
    "list_for_user: one call, by the user's sessions",
    "sessions of the user",
    "µs",
);
const LOGOUT: Axes = (
    "delete_for_user (log out everywhere): one call, by the user's sessions",
    "sessions of the user",
    "µs",
);
const CLEANUP: Axes = (
    "delete_expired: one call, by the expired rows",
    "expired rows",
    "seconds",
);

/// `list_for_user` and `delete_for_user` (what `list_user_sessions` and
/// `logout_everywhere` call) with 1 to 1,000 sessions of one user: the median time of one
/// call, then the round trips of one call, counted on the wire (a pass of its own, so that
/// Redis's `MONITOR` never runs while the time is taken).
async fn user_sessions(s: &Settings) -> Result<(), BoxErr> {
    let sizes: &[usize] = if s.quick {
        &[1, 10, 100]
    } else {
        &[1, 10, 100, 1000]
    };
    let reps = if s.quick { 1 } else { 5 };
    println!("### One user's sessions: list them, log out everywhere\n");
    println!(
        "Store level: `list_for_user` (what `Session::list_user_sessions` calls) and \
         `delete_for_user` (what `logout_everywhere` calls) on one user holding N live \
         sessions among the others; the median of {reps} calls, each on a fresh user, and \
         the round trips of one call.\n"
    );
    println!(
        "| store | sessions | list µs | list round trips | log out everywhere µs | \
         log out round trips | list µs per session |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for mut subject in subjects(s).await? {
        let store = &*subject.store;
        // Other users' sessions around the measured one's.
        sessions_of(store, &unique("neighbour"), 200).await?;
        let mut rows = Vec::new();
        for &n in sizes {
            let (mut list, mut logout) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                let user = unique("scaleuser");
                sessions_of(store, &user, n).await?;
                let t = Instant::now();
                let listed = store.list_for_user(&user).await?;
                list.push(t.elapsed().as_secs_f64() * 1e6);
                if listed.len() != n {
                    return Err(format!("{}: listed {} of {n}", subject.name, listed.len()).into());
                }
                let t = Instant::now();
                let gone = store.delete_for_user(&user, None).await?;
                logout.push(t.elapsed().as_secs_f64() * 1e6);
                if gone != n as u64 {
                    return Err(format!("{}: logged out {gone} of {n}", subject.name).into());
                }
            }
            let (list, logout) = (median(list), median(logout));
            crate::charts::point("growth-list", LIST, subject.name, n as f64, list);
            crate::charts::point("growth-logout", LOGOUT, subject.name, n as f64, logout);
            rows.push((n, list, logout));
        }
        subject.wire.start().await?;
        for (n, list, logout) in rows {
            let user = unique("scaleuser");
            sessions_of(store, &user, n).await?;
            let w0 = subject.wire.read().await?;
            store.list_for_user(&user).await?;
            let w1 = subject.wire.read().await?;
            store.delete_for_user(&user, None).await?;
            let w2 = subject.wire.read().await?;
            let rt = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) => (b - a).to_string(),
                _ => "— (in process)".to_owned(),
            };
            println!(
                "| {} | {n} | {list:.0} | {} | {logout:.0} | {} | {:.1} |",
                subject.name,
                rt(w0, w1),
                rt(w1, w2),
                list / n as f64
            );
        }
        subject.wire.stop();
    }
    println!();
    Ok(())
}

/// The SQL statements that turn a table of 1,000 sessions into `n` expired rows: every
/// existing row expired, then copies of them under new ids.
fn expired_fill(kind: &str, table: &str, copies: usize) -> [String; 2] {
    let expire = format!("UPDATE {table} SET expires_at = created_at");
    [expire, copy_rows(kind, table, 1, copies)]
}

/// Live traffic (one load + one save on 1,000 live sessions, concurrency 16) until `stop`
/// is set: the latencies.
async fn live_until(work: Arc<Coatcheck>, stop: Arc<AtomicBool>) -> Result<Vec<u32>, BoxErr> {
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (work, stop) = (work.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new();
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                work.once((rng.next_u64() % 1000) as usize).await?;
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok::<_, BoxErr>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(all)
}

/// A pool to run the fixture's own SQL on.
pub(crate) enum Sql {
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool),
}

impl Sql {
    pub(crate) async fn run(&self, statement: &str) -> Result<(), sqlx::Error> {
        match self {
            Sql::Postgres(p) => sqlx::raw_sql(statement).execute(p).await.map(drop),
            Sql::Mysql(p) => sqlx::raw_sql(statement).execute(p).await.map(drop),
            Sql::Sqlite(p) => sqlx::raw_sql(statement).execute(p).await.map(drop),
        }
    }
}

/// The `q` quantile (0 to 1) of sorted latencies.
pub(crate) fn percentile(sorted: &[u32], q: f64) -> u32 {
    sorted
        .get((sorted.len().saturating_sub(1) as f64 * q) as usize)
        .copied()
        .unwrap_or(0)
}

/// `delete_expired` over 10^4 to 10^6 expired rows (the SQL stores: Redis and MongoDB
/// expire records by themselves), with live traffic beside it: the time of the call, and
/// the p99 of the live requests during it against their p99 alone.
async fn cleanup(s: &Settings) -> Result<(), BoxErr> {
    let sizes: &[usize] = if s.quick {
        &[10_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    println!("### `delete_expired` over many expired rows, with live traffic beside it\n");
    println!(
        "The SQL stores (Redis and MongoDB expire records by themselves: a TTL per key, a TTL \
         index). N expired rows (1,000 created through the store, the rest copied from them \
         in SQL) and 1,000 live sessions in one table; live traffic is one load + one save \
         per request at concurrency 16. \"Alone\": 2 s of that traffic (after a warm-up) before the cleanup; \
         \"during\": while `delete_expired` runs. Target: p99 during ≤ 2× alone.\n"
    );
    println!(
        "| store | expired rows | delete_expired s | rows/s | live p99 µs alone | \
         live p99 µs during | × alone | live requests during |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        for kind in ["postgres", "mysql", "sqlite"] {
            let table = unique("benchclean");
            let mut _file = None;
            let (store, sql): (Arc<dyn SessionStore>, Sql) = match kind {
                "postgres" => {
                    let (true, Some(url)) = (s.wants(kind), &s.database_url) else {
                        continue;
                    };
                    let store = coatcheck_postgres::PostgresStore::builder()
                        .table(table.clone())
                        .build(lean_pg_pool(url, 16).await?)?;
                    store.migrate().await?;
                    let pool = store.pool().clone();
                    (Arc::new(store), Sql::Postgres(pool))
                }
                "mysql" => {
                    let (true, Some(url)) = (s.wants(kind), &s.mysql_url) else {
                        continue;
                    };
                    let store = coatcheck_mysql::MySqlStore::builder()
                        .table(table.clone())
                        .build(mysql_pool(url)?)?;
                    store.migrate().await?;
                    let pool = store.pool().clone();
                    (Arc::new(store), Sql::Mysql(pool))
                }
                _ => {
                    if !s.wants(kind) {
                        continue;
                    }
                    let file = SqliteFile::new("benchclean");
                    let store = coatcheck_sqlite::SqliteStore::builder()
                        .table(table.clone())
                        .connect_lazy(&file.url())?;
                    store.migrate().await?;
                    _file = Some(file);
                    let pool = store.pool().clone();
                    (Arc::new(store), Sql::Sqlite(pool))
                }
            };
            // 1,000 sessions through the store, all expired, copied to n rows in SQL.
            Coatcheck::populate(store.clone(), 1000).await?;
            for statement in expired_fill(kind, &table, n / 1000 - 1) {
                sql.run(&statement).await?;
            }
            let live = Arc::new(Coatcheck::populate(store.clone(), 1000).await?);
            // Warm-up (connections, caches), not measured.
            let stop = Arc::new(AtomicBool::new(false));
            let traffic = tokio::spawn(live_until(live.clone(), stop.clone()));
            tokio::time::sleep(s.duration / 4).await;
            stop.store(true, Ordering::Relaxed);
            traffic.await??;
            stop.store(false, Ordering::Relaxed);
            let traffic = tokio::spawn(live_until(live.clone(), stop.clone()));
            tokio::time::sleep(s.duration).await;
            stop.store(true, Ordering::Relaxed);
            let alone = traffic.await??;
            stop.store(false, Ordering::Relaxed);
            let traffic = tokio::spawn(live_until(live.clone(), stop.clone()));
            let t = Instant::now();
            let removed = store.delete_expired().await;
            let took = t.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let during = traffic.await??;
            let removed = removed?;
            if removed != n as u64 {
                return Err(format!("{kind}: delete_expired removed {removed} of {n}").into());
            }
            let (a, d) = (percentile(&alone, 0.99), percentile(&during, 0.99));
            crate::charts::point("growth-cleanup", CLEANUP, kind, n as f64, took);
            println!(
                "| {kind} | {n} | {took:.2} | {:.0} | {a} | {d} | {:.2} | {} |",
                n as f64 / took,
                d as f64 / a.max(1) as f64,
                during.len()
            );
            let _ = sql.run(&format!("DROP TABLE {table}")).await;
        }
    }
    println!();
    Ok(())
}

/// Bytes per session, coatcheck next to tower-sessions, for 10,000 sessions of the same
/// data: Redis `used_memory` growth, Postgres table + indexes, MySQL data + index length,
/// SQLite file pages, MongoDB collection + index size.
async fn bytes_per_session(s: &Settings) -> Result<(), BoxErr> {
    let n = if s.quick { 1000 } else { 10_000 };
    println!("### Bytes per session\n");
    println!(
        "{n} sessions of the benchmark's ~5-key record written through each store; what the \
         server holds for them, divided by {n} (Redis: growth of `used_memory`; Postgres: \
         `pg_total_relation_size`; MySQL: `DATA_LENGTH + INDEX_LENGTH` after `ANALYZE \
         TABLE`; SQLite: the file's pages after a checkpoint; MongoDB: `size + \
         totalIndexSize` of `collStats`).\n"
    );
    println!("| store | coatcheck bytes/session | tower-sessions bytes/session |");
    println!("|---|---:|---:|");
    for (name, url) in [("redis", &s.redis_url), ("valkey", &s.valkey_url)] {
        let (true, Some(url)) = (s.wants(name), url) else {
            continue;
        };
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let used = |info: String| -> Result<f64, BoxErr> {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| "no used_memory in INFO".into())
        };
        let before = used(
            redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?,
        )?;
        let store = coatcheck_redis::RedisStore::builder()
            .prefix(format!("{}:", unique("benchbytes")))
            .connect(url)
            .await?;
        Coatcheck::populate(Arc::new(store), n).await?;
        let mid = used(
            redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?,
        )?;
        Tower::populate(
            tower_sessions_redis_store::RedisStore::new(fred_pool(url).await?),
            n,
        )
        .await?;
        let after = used(
            redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?,
        )?;
        println!(
            "| {name} | {:.0} | {:.0} |",
            (mid - before) / n as f64,
            (after - mid) / n as f64
        );
    }
    if let (true, Some(url)) = (s.wants("postgres"), &s.database_url) {
        let table = unique("benchbytes");
        let pool = lean_pg_pool(url, 4).await?;
        let store = coatcheck_postgres::PostgresStore::builder()
            .table(table.clone())
            .build(pool.clone())?;
        store.migrate().await?;
        Coatcheck::populate(Arc::new(store), n).await?;
        let schema = unique("benchbytes_ts");
        let ts = tower_sessions_sqlx_store::PostgresStore::new(pool.clone())
            .with_schema_name(schema.clone())?;
        ts.migrate().await?;
        Tower::populate(ts, n).await?;
        let size = |t: String| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT pg_total_relation_size($1::regclass)")
                    .bind(t)
                    .fetch_one(&pool)
                    .await
            }
        };
        let (cc, tw) = (
            size(table.clone()).await?,
            size(format!("{schema}.session")).await?,
        );
        println!(
            "| postgres | {:.0} | {:.0} |",
            cc as f64 / n as f64,
            tw as f64 / n as f64
        );
        sqlx::raw_sql(&format!("DROP TABLE {table}; DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await?;
    }
    if let (true, Some(url)) = (s.wants("mysql"), &s.mysql_url) {
        let table = unique("benchbytes");
        let pool = mysql_pool(url)?;
        let store = coatcheck_mysql::MySqlStore::builder()
            .table(table.clone())
            .build(pool.clone())?;
        store.migrate().await?;
        Coatcheck::populate(Arc::new(store), n).await?;
        let schema = unique("benchbytes_ts");
        let ts = tower_sessions_sqlx_store::MySqlStore::new(pool.clone())
            .with_schema_name(schema.clone())?;
        ts.migrate().await?;
        Tower::populate(ts, n).await?;
        let size = |db: Option<String>, t: String| {
            let pool = pool.clone();
            async move {
                let qualified = match &db {
                    Some(db) => format!("`{db}`.`{t}`"),
                    None => format!("`{t}`"),
                };
                sqlx::raw_sql(&format!("ANALYZE TABLE {qualified}"))
                    .execute(&pool)
                    .await?;
                sqlx::query_scalar::<_, u64>(
                    "SELECT CAST(DATA_LENGTH + INDEX_LENGTH AS UNSIGNED) FROM \
                     information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) \
                     AND TABLE_NAME = ?",
                )
                .bind(db)
                .bind(t)
                .fetch_one(&pool)
                .await
            }
        };
        let cc = size(None, table.clone()).await?;
        let tw = size(Some(schema.clone()), "session".into()).await?;
        println!(
            "| mysql | {:.0} | {:.0} |",
            cc as f64 / n as f64,
            tw as f64 / n as f64
        );
        sqlx::raw_sql(&format!(
            "DROP TABLE `{table}`; DROP TABLE `{table}_locks`; DROP DATABASE `{schema}`"
        ))
        .execute(&pool)
        .await?;
    }
    if s.wants("sqlite") {
        let (cc_file, ts_file) = (SqliteFile::new("benchbytes"), SqliteFile::new("benchbytes"));
        let store = cc_file.coatcheck()?;
        store.migrate().await?;
        Coatcheck::populate(Arc::new(store.clone()), n).await?;
        let ts = tower_sessions_sqlx_store::SqliteStore::new(ts_file.pool()?);
        ts.migrate().await?;
        Tower::populate(ts, n).await?;
        let size = |pool: sqlx::SqlitePool| async move {
            sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&pool)
                .await?;
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(&pool)
                .await?;
            let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&pool)
                .await?;
            Ok::<_, sqlx::Error>(pages * page)
        };
        let cc = size(store.pool().clone()).await?;
        let tw = size(ts_file.pool()?).await?;
        println!(
            "| sqlite | {:.0} | {:.0} |",
            cc as f64 / n as f64,
            tw as f64 / n as f64
        );
    }
    if let (true, Some(url)) = (s.wants("mongo"), &s.mongodb_url) {
        let client = mongodb::Client::with_uri_str(url).await?;
        let name = unique("benchbytes");
        let store = coatcheck_mongo::MongoStore::builder(&client, "coatcheck_bench")
            .collection(name.clone())
            .build_with_indexes()
            .await?;
        // The MongoDB-wire test server writes a few hundred records a second: 1,000 here.
        let n = n.min(1000);
        Coatcheck::populate(Arc::new(store.clone()), n).await?;
        let stats = client
            .database("coatcheck_bench")
            .run_command(mongodb::bson::doc! { "collStats": &name })
            .await;
        let cell = match stats {
            Ok(doc) => {
                let num = |k: &str| {
                    doc.get(k).and_then(|v| match v {
                        mongodb::bson::Bson::Int32(x) => Some(f64::from(*x)),
                        mongodb::bson::Bson::Int64(x) => Some(*x as f64),
                        mongodb::bson::Bson::Double(x) => Some(*x),
                        _ => None,
                    })
                };
                match (num("size"), num("totalIndexSize")) {
                    (Some(a), Some(b)) => format!("{:.0}", (a + b) / n as f64),
                    _ => "— (the test server's collStats has no sizes)".to_owned(),
                }
            }
            Err(e) => format!("— (collStats: {e})"),
        };
        println!(
            "| mongo ({n} sessions, the test server) | {cell} | — (no tower-sessions store here) |"
        );
        let _ = store.collection().drop().await;
    }
    println!();
    Ok(())
}
