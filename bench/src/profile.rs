//! `coatcheck-bench profile <memory|redis|valkey|postgres> <coatcheck|tower> [requests]`:
//! that many `POST /incr` requests one after the other (100 clients' sessions, created
//! first), nothing else. The process to run under `valgrind --tool=callgrind` (instructions:
//! stable on a noisy machine) or `perf record`, to see where a write request's client CPU
//! goes; BENCHMARKS.md's write-path section was measured with it.

use std::sync::Arc;
use std::time::Instant;

use crate::http_level::{coatcheck_router, tower_router, Http};
use crate::store_level::{fred_pool, lean_pg_pool, unique};
use crate::{BoxErr, Work};

pub async fn run(args: &[String]) -> Result<(), BoxErr> {
    let usage = "profile <memory|redis|valkey|postgres> <coatcheck|tower> [requests]";
    let backend = args.first().ok_or(usage)?.as_str();
    let contender = args.get(1).ok_or(usage)?.as_str();
    let requests: usize = args.get(2).map_or(Ok(20_000), |n| n.parse())?;
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let router = match (backend, contender) {
        ("memory", "coatcheck") => {
            coatcheck_router(Arc::new(coatcheck_memory::MemoryStore::new()))?
        }
        ("memory", "tower") => tower_router(tower_sessions::MemoryStore::default()),
        ("redis" | "valkey", "coatcheck") => {
            let url = env(if backend == "redis" {
                "REDIS_URL"
            } else {
                "VALKEY_URL"
            })?;
            let store = coatcheck_redis::RedisStore::builder()
                .prefix(format!("{}:", unique("benchprof")))
                .connect(&url)
                .await?;
            coatcheck_router(Arc::new(store))?
        }
        ("redis" | "valkey", "tower") => {
            let url = env(if backend == "redis" {
                "REDIS_URL"
            } else {
                "VALKEY_URL"
            })?;
            tower_router(tower_sessions_redis_store::RedisStore::new(
                fred_pool(&url).await?,
            ))
        }
        ("postgres", "coatcheck") => {
            let store = coatcheck_postgres::PostgresStore::builder()
                .table(unique("benchprof"))
                .build(lean_pg_pool(&env("DATABASE_URL")?, 4).await?)?;
            store.migrate().await?;
            coatcheck_router(Arc::new(store))?
        }
        ("postgres", "tower") => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect(&env("DATABASE_URL")?)
                .await?;
            let ts = tower_sessions_sqlx_store::PostgresStore::new(pool)
                .with_schema_name(unique("benchprof_ts"))?;
            ts.migrate().await?;
            tower_router(ts)
        }
        _ => return Err(usage.into()),
    };
    let http = Http::with_clients(router, 100, true).await?;
    let cpu = crate::cpu::own_cpu_seconds().unwrap_or(0.0);
    let start = Instant::now();
    for n in 0..requests {
        http.once(n).await?;
    }
    let (wall, cpu) = (
        start.elapsed(),
        crate::cpu::own_cpu_seconds().unwrap_or(0.0) - cpu,
    );
    println!(
        "{backend} {contender}: {requests} requests in {wall:?}, {:.1} µs CPU per request",
        cpu * 1e6 / requests as f64
    );
    Ok(())
}
