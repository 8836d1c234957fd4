//! The nemesis (Jepsen's name for it): faults injected into a private server while a history
//! runs, drawn from the history's seed — killed client connections (`CLIENT KILL`,
//! `pg_terminate_backend`, `ss -K` for the Mongo-wire server), the server paused past the layer's `store_timeout` (SIGSTOP,
//! then SIGCONT) and a restart that keeps the data (a Redis or Valkey append-only file
//! fsynced at every write; PostgreSQL's `pg_ctl stop -m immediate`, then start) and a
//! failover under Redis Sentinel with the replicas behind. Each fault
//! is recorded with when it began and ended, for the report.
//!
//! A request caught by a fault answers `503` (or fails its store call otherwise): it is
//! *indeterminate* — its writes may or may not have happened, even after its answer (a
//! command the paused server still had in its socket runs when it wakes). `check.rs` allows
//! exactly that.

use std::fmt;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::servers::{PostgresServer, ReplicatedRedis, Server};

/// A server the history checker can hurt while a history runs: give one to
/// [`Config::faults`](super::Config::faults). [`Target`] covers the private servers of
/// [`servers`](crate::servers); a store of another database implements this for its own.
#[async_trait]
pub trait FaultTarget: Send + Sync + 'static {
    /// The faults this server can be given; a kind listed twice is drawn twice as often.
    fn kinds(&self) -> Vec<FaultKind>;

    /// Injects one fault and returns once it is over (the server answers again); a
    /// [`FaultKind::Pause`] lasts `pause`. Errors are the fixture's to ignore: a fault that
    /// could not be injected is simply no fault.
    async fn inject(&self, kind: FaultKind, pause: Duration);
}

/// The private servers of [`servers`](crate::servers) as fault targets.
#[derive(Debug)]
#[non_exhaustive]
pub enum Target {
    /// A durable `redis-server` or `valkey-server` ([`Server::redis_durable`]).
    Redis(Server),
    /// A private PostgreSQL: client backends terminated (`pg_terminate_backend`), and
    /// crashed (`pg_ctl stop -m immediate`) then started again.
    Postgres(PostgresServer),
    /// The MongoDB-wire test server: its connections killed (by the kernel: `ss -K`, as it
    /// has no command for it) and paused; never restarted (it keeps no data across one).
    Mongo(Server),
}

/// How far the replicas fall behind before a [`FaultKind::Failover`] kills the primary:
/// longer than the `WAIT` of a store that waits for replicas in the histories (200 ms)
/// and long enough for the history to acknowledge a fair share of its requests in it,
/// shorter than the sentinels' `down-after-milliseconds` (2 s).
const FAILOVER_LAG: Duration = Duration::from_millis(700);

/// The kinds `COATCHECK_NEMESIS` (a comma-separated list of `kill`, `pause`, `restart`,
/// `failover`)
/// lets through.
fn wanted(kinds: Vec<FaultKind>) -> Vec<FaultKind> {
    let only = std::env::var("COATCHECK_NEMESIS").unwrap_or_default();
    let wanted = |k: &FaultKind| {
        let name = match k {
            FaultKind::KillConnections => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::Failover => "failover",
        };
        only.trim().is_empty() || only.split(',').any(|w| w.trim() == name)
    };
    kinds.into_iter().filter(wanted).collect()
}

#[async_trait]
impl FaultTarget for Target {
    fn kinds(&self) -> Vec<FaultKind> {
        match self {
            Target::Redis(_) => vec![
                FaultKind::KillConnections,
                FaultKind::KillConnections,
                FaultKind::Pause,
                FaultKind::Restart,
            ],
            Target::Postgres(_) => vec![FaultKind::KillConnections, FaultKind::Restart],
            Target::Mongo(_) => vec![FaultKind::KillConnections, FaultKind::Pause],
        }
    }

    async fn inject(&self, kind: FaultKind, pause: Duration) {
        match (self, kind) {
            (Target::Redis(s), FaultKind::KillConnections) => {
                let port = s.port();
                let _ = tokio::task::spawn_blocking(move || redis_kill_clients(port)).await;
            }
            (Target::Postgres(p), FaultKind::KillConnections) => {
                tokio::task::block_in_place(|| p.terminate_clients());
            }
            (Target::Mongo(s), FaultKind::KillConnections) => {
                let port = s.port();
                let _ = tokio::task::spawn_blocking(move || kill_sockets(port)).await;
            }
            (Target::Redis(s) | Target::Mongo(s), FaultKind::Pause) => {
                s.freeze(true);
                tokio::time::sleep(pause).await;
                s.freeze(false);
            }
            (Target::Redis(s), FaultKind::Restart) => {
                tokio::task::block_in_place(|| s.restart());
            }
            (Target::Postgres(p), FaultKind::Restart) => {
                tokio::task::block_in_place(|| {
                    p.crash();
                    p.start_again();
                });
            }
            _ => {}
        }
    }
}

/// A primary with two replicas under three sentinels, failed over
/// ([`ReplicatedRedis::fail_over`]) with the replicas 700 ms behind when the primary dies.
#[async_trait]
impl FaultTarget for ReplicatedRedis {
    fn kinds(&self) -> Vec<FaultKind> {
        vec![FaultKind::Failover]
    }

    async fn inject(&self, kind: FaultKind, _pause: Duration) {
        if kind == FaultKind::Failover {
            tokio::task::block_in_place(|| self.fail_over(FAILOVER_LAG));
        }
    }
}

/// A target shared with the test (which needs its addresses while the history runs).
#[async_trait]
impl<T: FaultTarget> FaultTarget for Arc<T> {
    fn kinds(&self) -> Vec<FaultKind> {
        (**self).kinds()
    }

    async fn inject(&self, kind: FaultKind, pause: Duration) {
        (**self).inject(kind, pause).await;
    }
}

/// `CLIENT KILL TYPE normal SKIPME yes`: every client connection but this one is closed.
fn redis_kill_clients(port: u16) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"CLIENT KILL TYPE normal SKIPME yes\r\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(())
}

/// Resets every established connection to `port` on this machine (iproute2's `ss -K`,
/// which asks the kernel to destroy the sockets): the server's clients see their
/// connections reset, the server keeps listening.
fn kill_sockets(port: u16) -> std::io::Result<()> {
    std::process::Command::new("ss")
        .args(["-K", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(drop)
}

/// What a fault does to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Every client connection closed or reset; the server keeps running.
    KillConnections,
    /// The server stops answering (SIGSTOP) for longer than the layer's store timeout,
    /// then resumes.
    Pause,
    /// The server stops at once and starts again, keeping what it made durable.
    Restart,
    /// The replicas fall behind, the primary dies, the sentinels promote a replica: what
    /// the primary acknowledged but did not replicate is gone.
    Failover,
}

/// One injected fault: what, and when (µs since the history began).
#[derive(Debug, Clone)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// When it began, µs since the history began.
    pub began: u64,
    /// When the server answered again.
    pub ended: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nemesis [{:>8}µs → {:>8}µs] {:?}",
            self.began, self.ended, self.kind
        )
    }
}

pub struct Nemesis {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Fault>>,
}

impl Nemesis {
    /// Starts injecting faults into `target`, one at a time, every 20–150 ms (see
    /// `COATCHECK_NEMESIS_GAP_MS`), drawn from
    /// `seed`; a pause lasts `pause` (longer than the layer's `store_timeout`).
    pub fn start(target: Arc<dyn FaultTarget>, seed: u64, start: Instant, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        // `COATCHECK_NEMESIS_GAP_MS`: the longest quiet time between two faults.
        let gap_ms: u64 = std::env::var("COATCHECK_NEMESIS_GAP_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(150);
        let task = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ 0xFA17);
            let mut faults = Vec::new();
            loop {
                let wait = Duration::from_millis(rng.gen_range(20..gap_ms.max(21)));
                tokio::time::sleep(wait).await;
                if halt.load(Ordering::SeqCst) {
                    return faults;
                }
                let Some(&kind) = wanted(target.kinds()).choose(&mut rng) else {
                    return faults;
                };
                let began = start.elapsed().as_micros() as u64;
                target.inject(kind, pause).await;
                let ended = start.elapsed().as_micros() as u64;
                faults.push(Fault { kind, began, ended });
            }
        });
        Nemesis { stop, task }
    }

    /// Stops after the fault in progress (the server answers again); the faults injected.
    pub async fn stop(self) -> Vec<Fault> {
        self.stop.store(true, Ordering::SeqCst);
        #[allow(clippy::expect_used)] // a fixture's own panic, passed on
        self.task.await.expect("the nemesis panicked")
    }
}
