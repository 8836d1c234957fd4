//! Load + save with 10^3 to 10^6 live sessions in the store (`--part live`): the
//! same request (one load, one save of a random live session, concurrency 16) as the store
//! fills up. Flat is the goal: a lookup by key should not cost more in a bigger store.
//!
//! The fixture creates 1,000 sessions through the store, then copies them under new ids
//! (`{id}-{j}`, still valid session ids) by the fastest path each server has: `COPY` for
//! Redis and Valkey, `INSERT … SELECT` for the SQL stores, the store's own `create` for the
//! in-process store and MongoDB. Every copy is a live session the traffic picks at random.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coatcheck_core::{Record, SessionId, SessionStore, Timestamp};

use crate::scale::{median, percentile, Sql, Subject};
use crate::store_level::{sample_data, Coatcheck, Tower};
use crate::{run_once, BoxErr, Settings, Work};

/// How a subject's store gets many sessions quickly.
pub(crate) enum Fill {
    /// Through the store's `create`, 16 at a time.
    Create,
    /// `COPY {prefix}{id} {prefix}{id}-{j}`, pipelined.
    Redis { url: String, prefix: String },
    /// `INSERT … SELECT` from the table's own rows.
    Sql {
        sql: Sql,
        kind: &'static str,
        table: String,
    },
}

/// The statement that copies every original row (an id of 32 characters) of `table` under
/// the ids `{id}-{j}` for `j` in `from..=to`, keeping each row's expiry.
pub(crate) fn copy_rows(kind: &str, table: &str, from: usize, to: usize) -> String {
    let cols = "version, data, created_at, expires_at";
    match kind {
        "postgres" => format!(
            "INSERT INTO {table} (id, {cols}) SELECT t.id || '-' || n.i, t.version, t.data, \
             t.created_at, t.expires_at FROM {table} t CROSS JOIN generate_series({from}, \
             {to}) AS n(i) WHERE length(t.id) = 32"
        ),
        "mysql" => format!(
            "INSERT INTO {table} (id, {cols}) WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL \
             SELECT i + 1 FROM n WHERE i < {to}) SELECT CONCAT(t.id, '-', n.i), t.version, \
             t.data, t.created_at, t.expires_at FROM {table} t CROSS JOIN n \
             WHERE CHAR_LENGTH(t.id) = 32"
        ),
        _ => format!(
            "INSERT INTO {table} (id, {cols}) WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL \
             SELECT i + 1 FROM n WHERE i < {to}) SELECT t.id || '-' || n.i, t.version, \
             t.data, t.created_at, t.expires_at FROM {table} t CROSS JOIN n \
             WHERE length(t.id) = 32"
        ),
    }
}

const LIVE: (&str, &str, &str) = (
    "load + save of a random live session (concurrency 16): median by live sessions",
    "live sessions in the store",
    "µs (p50)",
);

/// The ids `{base}-{j}` for `j` in `from..=to`.
fn copies(base: &[SessionId], from: usize, to: usize) -> Result<Vec<SessionId>, BoxErr> {
    let mut out = Vec::with_capacity(base.len() * (to + 1 - from));
    for j in from..=to {
        for b in base {
            out.push(SessionId::parse(&format!("{}-{j}", b.as_str()))?);
        }
    }
    Ok(out)
}

/// Adds the sessions `fresh` (copies of `base`, numbered `from..=to`) to the subject's store.
async fn fill(
    subject: &Subject,
    base: &[SessionId],
    fresh: &[SessionId],
    (from, to): (usize, usize),
) -> Result<(), BoxErr> {
    match &subject.fill {
        Fill::Create => {
            let now = Timestamp::now();
            let chunk = fresh.len().div_ceil(16).max(1);
            let mut tasks = Vec::new();
            for part in fresh.chunks(chunk) {
                let (store, part) = (subject.store.clone(), part.to_vec());
                tasks.push(tokio::spawn(async move {
                    for (i, id) in part.into_iter().enumerate() {
                        let mut r = Record::new(id, now, now + Duration::from_secs(3600));
                        r.data = sample_data(i);
                        store.create(&r).await?;
                    }
                    Ok::<_, BoxErr>(())
                }));
            }
            for t in tasks {
                t.await??;
            }
        }
        Fill::Redis { url, prefix } => {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            for j in from..=to {
                let mut pipe = redis::pipe();
                for b in base {
                    let src = format!("{prefix}{}", b.as_str());
                    pipe.cmd("COPY")
                        .arg(&src)
                        .arg(format!("{src}-{j}"))
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
            }
        }
        Fill::Sql { sql, kind, table } => {
            sql.run(&copy_rows(kind, table, from, to)).await?;
            // Fresh statistics, so that no autovacuum or analyze starts during the traffic.
            let analyze = match *kind {
                "postgres" => format!("VACUUM ANALYZE {table}"),
                "mysql" => format!("ANALYZE TABLE {table}"),
                _ => "ANALYZE".to_owned(),
            };
            sql.run(&analyze).await?;
        }
    }
    // Every copy is a session the store can load.
    if let Some(last) = fresh.last() {
        subject
            .store
            .load(last)
            .await?
            .ok_or_else(|| format!("{}: the copy {last:?} does not load", subject.name))?;
    }
    Ok(())
}

/// Removes what the fixture wrote (10^6 sessions are a few hundred MB on a server).
async fn clear(subject: &Subject, ids: &[SessionId]) -> Result<(), BoxErr> {
    match &subject.fill {
        Fill::Create => {}
        Fill::Redis { url, prefix } => {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            for part in ids.chunks(1000) {
                let mut pipe = redis::pipe();
                for id in part {
                    pipe.cmd("UNLINK")
                        .arg(format!("{prefix}{}", id.as_str()))
                        .ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
            }
        }
        Fill::Sql { sql, table, .. } => sql.run(&format!("DROP TABLE {table}")).await?,
    }
    Ok(())
}

/// Load + save at concurrency 16 on random keys: the median over the repetitions of the
/// throughput, p50 and p99 (after a warm-up).
async fn measure(
    s: &Settings,
    work: Arc<dyn Work>,
    keys: usize,
) -> Result<(f64, f64, f64), BoxErr> {
    run_once(work.clone(), 16, s.duration / 4, keys).await?;
    let (mut rate, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.reps {
        let mut run = run_once(work.clone(), 16, s.duration, keys).await?;
        run.latencies_us.sort_unstable();
        rate.push(run.ops_per_sec);
        p50.push(f64::from(percentile(&run.latencies_us, 0.5)));
        p99.push(f64::from(percentile(&run.latencies_us, 0.99)));
    }
    Ok((median(rate), median(p50), median(p99)))
}

/// tower-sessions' in-memory store at the same sizes: what a `HashMap` of records costs as
/// it outgrows the CPU's caches, for the in-process rows to be read against.
async fn tower_memory(s: &Settings, sizes: &[usize]) -> Result<(), BoxErr> {
    let mut first = None;
    for &n in sizes {
        let t = Instant::now();
        let work = Tower::populate(tower_sessions::MemoryStore::default(), n).await?;
        let filled = t.elapsed().as_secs_f64();
        let (rate, p50, p99) = measure(s, Arc::new(work), n).await?;
        row(
            "tower-sessions memory",
            n,
            filled,
            (rate, p50, p99),
            &mut first,
        );
    }
    Ok(())
}

/// One row of the table and one point of the chart.
fn row(
    name: &str,
    n: usize,
    filled: f64,
    (rate, p50, p99): (f64, f64, f64),
    first: &mut Option<f64>,
) {
    let first = *first.get_or_insert(p50);
    crate::charts::point("growth-live", LIVE, name, n as f64, p50);
    println!(
        "| {name} | {n} | {filled:.2} | {rate:.0} | {p50:.0} | {p99:.0} | {:.2} |",
        p50 / first.max(1.0)
    );
}

/// Load + save at 10^3, 10^4, 10^5 and 10^6 live sessions, every store (MongoDB up to
/// 10^4: the MongoDB-wire test server writes a few hundred documents a second).
pub(crate) async fn live_growth(s: &Settings, subjects: Vec<Subject>) -> Result<(), BoxErr> {
    let sizes: &[usize] = if s.quick {
        &[1000, 10_000]
    } else {
        &[1000, 10_000, 100_000, 1_000_000]
    };
    println!("### Load + save as the store fills up\n");
    println!(
        "One load + one save of a random live session, concurrency 16, {:?} per size after a \
         warm-up, median of {} runs; the store holds N live sessions (1,000 created through \
         it, the rest copies under new ids: `COPY` on Redis and Valkey, `INSERT … SELECT` on \
         the SQL stores, then `VACUUM ANALYZE` / `ANALYZE`; `create` on memory and MongoDB). \
         Flat is the goal.\n",
        s.duration, s.reps
    );
    println!(
        "| store | live sessions | fill s | load+save /s | p50 µs | p99 µs | p50 × at 1,000 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    if s.wants("memory") {
        tower_memory(s, sizes).await?;
    }
    for subject in subjects {
        // The MongoDB-wire test server writes a few hundred documents a second.
        let cap = match (subject.name, s.quick) {
            ("mongo", true) => 1000,
            ("mongo", false) => 10_000,
            _ => usize::MAX,
        };
        let base = Coatcheck::populate(subject.store.clone(), 1000).await?.ids;
        let mut ids = base.clone();
        let mut first_p50 = None;
        for &n in sizes.iter().filter(|&&n| n <= cap) {
            let t = Instant::now();
            if n > ids.len() {
                let range = (ids.len() / 1000, n / 1000 - 1);
                let fresh = copies(&base, range.0, range.1)?;
                fill(&subject, &base, &fresh, range).await?;
                ids.extend(fresh);
            }
            let filled = t.elapsed().as_secs_f64();
            let work = Arc::new(Coatcheck {
                store: subject.store.clone(),
                ids: ids.clone(),
            });
            let (rate, p50, p99) = measure(s, work, ids.len()).await?;
            row(subject.name, n, filled, (rate, p50, p99), &mut first_p50);
        }
        clear(&subject, &ids).await?;
    }
    println!();
    Ok(())
}
