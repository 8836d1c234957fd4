//! coatcheck-bench: coatcheck against the raw drivers and tower-sessions, in one run.
//!
//! ```text
//! cargo run -p coatcheck-bench --release -- [--quick] [--backend memory,redis,postgres,mongo]
//! ```
//!
//! Backends come from `REDIS_URL`, `DATABASE_URL`, `MONGODB_URL`; a backend without its URL
//! is left out (and said so). Every contender of a section runs in the same process,
//! interleaved A B C A B C over the repetitions, and the table reports medians, min–max,
//! p50/p99 latency and paired ratios (the median of the per-repetition ratios).

mod count;
mod http_level;
mod report;
mod store_level;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// One unit of work: a simulated request.
#[async_trait]
pub trait Work: Send + Sync {
    async fn once(&self, n: usize) -> Result<(), BoxErr>;
}

/// A contender in a section.
pub struct Contender {
    pub name: String,
    /// Ratios are given against contenders whose `reference` is set, by that label.
    pub reference: Option<&'static str>,
    pub work: Arc<dyn Work>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub duration: Duration,
    pub reps: usize,
    pub sessions: usize,
    pub backends: Vec<String>,
    pub redis_url: Option<String>,
    pub database_url: Option<String>,
    pub mongodb_url: Option<String>,
}

impl Settings {
    fn from_args() -> Result<Self, BoxErr> {
        let mut quick = false;
        let mut backends = vec![
            "memory".to_owned(),
            "redis".into(),
            "postgres".into(),
            "mongo".into(),
        ];
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--backend" => {
                    let v = args.next().ok_or("--backend needs a value")?;
                    backends = v.split(',').map(|s| s.trim().to_owned()).collect();
                }
                "-h" | "--help" => {
                    println!("coatcheck-bench [--quick] [--backend memory,redis,postgres,mongo]");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(Settings {
            quick,
            duration: if quick {
                Duration::from_millis(150)
            } else {
                Duration::from_secs(2)
            },
            reps: if quick { 1 } else { 5 },
            sessions: if quick { 500 } else { 10_000 },
            backends,
            redis_url: env("REDIS_URL"),
            database_url: env("DATABASE_URL"),
            mongodb_url: env("MONGODB_URL"),
        })
    }

    pub fn wants(&self, backend: &str) -> bool {
        self.backends.iter().any(|b| b == backend)
    }
}

/// A small, fast per-task random sequence (xorshift), seeded from the OS.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// One timed run: `concurrency` tasks calling `work` on random keys until `duration` ends.
pub struct Run {
    pub ops_per_sec: f64,
    pub latencies_us: Vec<u32>,
}

pub async fn run_once(
    work: Arc<dyn Work>,
    concurrency: usize,
    duration: Duration,
    keyspace: usize,
) -> Result<Run, BoxErr> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new();
            let mut lat = Vec::with_capacity(4096);
            while Instant::now() < deadline {
                let n = (rng.next_u64() % keyspace as u64) as usize;
                let t0 = Instant::now();
                work.once(n).await?;
                lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Ok::<_, BoxErr>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Run {
        ops_per_sec: all.len() as f64 / secs,
        latencies_us: all,
    })
}

/// Runs the contenders of one section interleaved over the repetitions and prints its table.
pub async fn section(
    title: &str,
    contenders: &[Contender],
    concurrency: usize,
    keyspace: usize,
    s: &Settings,
) -> Result<(), BoxErr> {
    let mut runs: Vec<Vec<Run>> = contenders.iter().map(|_| Vec::new()).collect();
    // Warm-up, not measured.
    for c in contenders {
        run_once(c.work.clone(), concurrency, s.duration / 4, keyspace).await?;
    }
    for _ in 0..s.reps {
        for (i, c) in contenders.iter().enumerate() {
            runs[i].push(run_once(c.work.clone(), concurrency, s.duration, keyspace).await?);
        }
    }
    report::table(title, contenders, &runs, concurrency);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxErr> {
    count::install();
    let s = Settings::from_args()?;
    println!("# coatcheck-bench\n");
    println!(
        "Machine: {} cores. Mode: {}. Each cell: {} repetition(s) of {:?}, interleaved; \
         {} pre-populated sessions.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if s.quick {
            "--quick (numbers only prove it runs)"
        } else {
            "full"
        },
        s.reps,
        s.duration,
        s.sessions
    );
    for (b, url) in [
        ("redis", &s.redis_url),
        ("postgres", &s.database_url),
        ("mongo", &s.mongodb_url),
    ] {
        if s.wants(b) && url.is_none() {
            println!("_{b}: left out (no URL in the environment)._\n");
        }
    }
    store_level::run(&s).await?;
    http_level::run(&s).await?;
    count::round_trips(&s).await?;
    Ok(())
}
