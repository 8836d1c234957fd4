//! coatcheck-bench: coatcheck against the raw drivers and tower-sessions, in one run.
//!
//! ```text
//! cargo run -p coatcheck-bench --release -- [--quick] [--backend memory,redis,valkey,postgres,mongo,mysql,sqlite] [--part codec,store,http,rt,replicas,scale,live,metrics] [--charts DIR] [--clients N]
//! ```
//!
//! Backends come from `REDIS_URL`, `VALKEY_URL`, `DATABASE_URL`, `MONGODB_URL`, `MYSQL_URL`
//! (SQLite needs none: a file in the temporary directory); a backend
//! without its URL
//! is left out (and said so). Every contender of a section runs in the same process,
//! interleaved A B C A B C over the repetitions, and the table reports medians, min–max,
//! p50/p99 latency and paired ratios (the median of the per-repetition ratios).

mod charts;
mod codec_cost;
mod count;
mod cpu;
mod http_level;
mod metrics_cost;
mod profile;
mod replicas;
mod report;
mod scale;
mod scale_live;
mod sql_stores;
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
    /// The server whose CPU per operation is reported (none for in-process stores).
    pub server: Option<cpu::Server>,
}

impl Contender {
    pub fn new(name: impl Into<String>, work: Arc<dyn Work>) -> Self {
        Contender {
            name: name.into(),
            reference: None,
            work,
            server: None,
        }
    }

    /// Ratios of every contender of the section are given against this one, as `label`.
    pub fn reference(mut self, label: &'static str) -> Self {
        self.reference = Some(label);
        self
    }

    /// Reports the CPU per operation of `server`.
    pub fn on(mut self, server: Option<cpu::Server>) -> Self {
        self.server = server;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub duration: Duration,
    pub reps: usize,
    pub sessions: usize,
    pub backends: Vec<String>,
    /// `codec`, `store`, `http`, `rt` (round trips), `replicas`, `scale` (how cost grows
    /// with the work), `live` (load + save as the store fills up), `metrics`: the parts to
    /// run (default all).
    pub parts: Vec<String>,
    /// Where to write the SVG charts (`--charts DIR`); none: no charts.
    pub charts: Option<std::path::PathBuf>,
    /// The middleware sections' clients, each with its own session (`--clients N`; default
    /// 1,000, 100 with `--quick`). Fewer clients, more requests racing on one session.
    pub clients: usize,
    pub redis_url: Option<String>,
    pub valkey_url: Option<String>,
    pub database_url: Option<String>,
    pub mongodb_url: Option<String>,
    pub mysql_url: Option<String>,
}

impl Settings {
    fn from_args() -> Result<Self, BoxErr> {
        let mut quick = false;
        let mut backends = vec![
            "memory".to_owned(),
            "redis".into(),
            "valkey".into(),
            "postgres".into(),
            "mongo".into(),
            "mysql".into(),
            "sqlite".into(),
        ];
        let mut parts = vec![
            "codec".to_owned(),
            "store".into(),
            "http".into(),
            "rt".into(),
            "replicas".into(),
            "scale".into(),
            "live".into(),
            "metrics".into(),
        ];
        let mut charts = None;
        let mut clients = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--backend" => {
                    let v = args.next().ok_or("--backend needs a value")?;
                    backends = v.split(',').map(|s| s.trim().to_owned()).collect();
                }
                "--clients" => {
                    let v = args.next().ok_or("--clients needs a number")?;
                    clients = Some(
                        v.parse()
                            .map_err(|_| format!("--clients {v}: not a number"))?,
                    );
                }
                "--charts" => {
                    charts = Some(args.next().ok_or("--charts needs a directory")?.into());
                }
                "--part" => {
                    let v = args.next().ok_or("--part needs a value")?;
                    parts = v.split(',').map(|s| s.trim().to_owned()).collect();
                }
                "-h" | "--help" => {
                    println!(
                        "coatcheck-bench [--quick] [--backend memory,redis,valkey,postgres,mongo,mysql,sqlite] [--part codec,store,http,rt,replicas,scale,live,metrics] [--charts DIR] [--clients N]"
                    );
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
            parts,
            charts,
            clients: clients.unwrap_or(if quick { 100 } else { 1000 }),
            redis_url: env("REDIS_URL"),
            valkey_url: env("VALKEY_URL"),
            database_url: env("DATABASE_URL"),
            mongodb_url: env("MONGODB_URL"),
            mysql_url: env("MYSQL_URL"),
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
    /// Server CPU µs per operation, when the contender names its server.
    pub server_us_per_op: Option<f64>,
    /// This process's CPU µs per operation (application side and load generator).
    pub client_us_per_op: Option<f64>,
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
        server_us_per_op: None,
        client_us_per_op: None,
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
            let before = c.server.as_ref().and_then(cpu::Server::cpu_seconds);
            let own_before = cpu::own_cpu_seconds();
            let mut run = run_once(c.work.clone(), concurrency, s.duration, keyspace).await?;
            let own_after = cpu::own_cpu_seconds();
            let after = c.server.as_ref().and_then(cpu::Server::cpu_seconds);
            let ops = run.latencies_us.len().max(1) as f64;
            if let (Some(b), Some(a)) = (before, after) {
                run.server_us_per_op = Some((a - b) * 1e6 / ops);
            }
            if let (Some(b), Some(a)) = (own_before, own_after) {
                run.client_us_per_op = Some((a - b) * 1e6 / ops);
            }
            runs[i].push(run);
        }
    }
    report::table(title, contenders, &runs, concurrency);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxErr> {
    count::install();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("profile") {
        return profile::run(&args[1..]).await;
    }
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
        ("valkey", &s.valkey_url),
        ("postgres", &s.database_url),
        ("mongo", &s.mongodb_url),
        ("mysql", &s.mysql_url),
    ] {
        if s.wants(b) && url.is_none() {
            println!("_{b}: left out (no URL in the environment)._\n");
        }
    }
    let part = |p: &str| s.parts.iter().any(|x| x == p);
    if part("codec") {
        codec_cost::run(&s)?;
    }
    if part("store") {
        store_level::run(&s).await?;
    }
    if part("http") {
        http_level::run(&s).await?;
    }
    if part("rt") {
        count::round_trips(&s).await?;
    }
    if part("replicas") {
        replicas::run(&s).await?;
    }
    if part("scale") {
        scale::run(&s).await?;
    }
    if part("live") {
        scale::live(&s).await?;
    }
    if let Some(dir) = &s.charts {
        let written = charts::write(dir)?;
        println!("Charts written: {}.\n", written.len());
    }
    // Last: it installs a global recorder for the rest of the process.
    if part("metrics") {
        metrics_cost::run(&s).await?;
    }
    Ok(())
}
