//! A replicated Redis (or Valkey) of the test's own: a primary, two replicas and three
//! sentinels on free loopback ports, and the fault that tests a failover honestly — the
//! replicas fall behind, the primary dies, a replica is promoted.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{free_port, missing, redis_args, redis_ping, runs, Server};
use crate::harness::Backend;

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "coatcheck";

/// A primary, two replicas and three sentinels (quorum 2, `down-after-milliseconds` 2000:
/// at 1000 or less, a sentinel that had just switched to a new master sometimes declared it
/// down one ping period later and failed over again, unasked),
/// all processes of the test's own, killed and their files removed on drop.
///
/// ```no_run
/// use coatcheck_conformance::servers::ReplicatedRedis;
///
/// let Some(group) = ReplicatedRedis::redis() else { return }; // skipped: no redis-server
/// let sentinels = group.sentinel_urls(); // redis://127.0.0.1:<port>, three of them
/// let before = group.master_port();
/// group.fail_over(std::time::Duration::from_millis(250)); // replicas behind, primary killed
/// assert_ne!(group.master_port(), before);
/// # let _ = sentinels;
/// ```
#[derive(Debug)]
pub struct ReplicatedRedis {
    program: PathBuf,
    /// The three data nodes, by port; which one is the master changes with each failover.
    nodes: Mutex<Vec<Server>>,
    sentinels: Vec<Server>,
    dir: PathBuf,
}

pub(super) fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn info_field(port: u16, field: &str) -> Option<String> {
    let info = cli(port, &["INFO", "replication"])?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Polls `done` every 20 ms; panics with `what` after `limit`.
pub(super) fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ReplicatedRedis {
    /// The group on Debian's `redis-server` (and `redis-cli` to drive it); `None` (or a
    /// panic under `COATCHECK_REQUIRE_BACKENDS`, as for [`Server::redis`]) without them.
    pub fn redis() -> Option<ReplicatedRedis> {
        if !runs(&PathBuf::from("redis-server"), "--version")
            || !runs(&PathBuf::from("redis-cli"), "--version")
        {
            return missing(Backend::Redis, "no redis-server and redis-cli on PATH");
        }
        Some(Self::start(PathBuf::from("redis-server")))
    }

    /// The group on `valkey-server` (found as [`Server::valkey`] finds it).
    pub fn valkey() -> Option<ReplicatedRedis> {
        let program = Server::valkey()?.program.clone();
        if !runs(&PathBuf::from("redis-cli"), "--version") {
            return missing(Backend::Valkey, "no redis-cli on PATH");
        }
        Some(Self::start(program))
    }

    fn node(&self, port: u16, replica_of: Option<u16>) -> Server {
        let mut args = redis_args(port);
        args.extend(
            [
                "--appendonly",
                "no",
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(str::to_owned),
        );
        // A directory of its own: a replica writes the RDB it syncs from (`dump.rdb`), and a
        // server started in a directory holding another version's RDB refuses to start.
        let dir = self.dir.join(format!("node-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        #[allow(clippy::expect_used)] // a test fixture: failing loudly is the point
        std::fs::create_dir_all(&dir).expect("create a data node's directory");
        args.extend(["--dir".to_owned(), dir.display().to_string()]);
        if let Some(master) = replica_of {
            args.extend(["--replicaof", "127.0.0.1", &master.to_string()].map(str::to_owned));
        }
        Server::start(
            "redis data node",
            format!("redis://127.0.0.1:{port}"),
            self.program.clone(),
            args,
            port,
            redis_ping,
            Duration::from_secs(10),
        )
    }

    fn start(program: PathBuf) -> ReplicatedRedis {
        let dir = std::env::temp_dir().join(crate::harness::unique_name("coatcheck-sentinel"));
        #[allow(clippy::expect_used)] // a test fixture: failing loudly is the point
        std::fs::create_dir_all(&dir).expect("create the group's directory");
        let mut group = ReplicatedRedis {
            program,
            nodes: Mutex::new(Vec::new()),
            sentinels: Vec::new(),
            dir,
        };
        let primary = free_port();
        let mut nodes = vec![group.node(primary, None)];
        for _ in 0..2 {
            nodes.push(group.node(free_port(), Some(primary)));
        }
        *group.lock() = nodes;
        for i in 0..3 {
            let port = free_port();
            let conf = group.dir.join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nlogfile {dir}/sentinel-{i}.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
                 sentinel failover-timeout {MASTER_NAME} 4000\n\
                 sentinel parallel-syncs {MASTER_NAME} 2\n",
                dir = group.dir.display()
            );
            #[allow(clippy::expect_used)]
            std::fs::write(&conf, text).expect("write a sentinel's configuration");
            group.sentinels.push(Server::start(
                "redis sentinel",
                format!("redis://127.0.0.1:{port}"),
                group.program.clone(),
                vec![conf.display().to_string(), "--sentinel".to_owned()],
                port,
                redis_ping,
                Duration::from_secs(10),
            ));
        }
        group.settle();
        group
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Server>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until every sentinel knows the master, both replicas and the other sentinels,
    /// and both replicas are in sync (done after start-up and after each failover; call it
    /// before building clients that count the master's replicas).
    ///
    /// # Panics
    /// If that takes longer than 20 s.
    pub fn settle(&self) {
        let master = self.master_port();
        for r in self.replica_ports() {
            wait_for("a replica in sync", Duration::from_secs(20), || {
                info_field(r, "master_link_status").as_deref() == Some("up")
                    && info_field(r, "master_port").as_deref() == Some(&master.to_string())
            });
        }
        wait_for(
            "the master seeing both replicas",
            Duration::from_secs(20),
            || info_field(master, "connected_slaves").as_deref() == Some("2"),
        );
        for s in &self.sentinels {
            wait_for(
                "every sentinel knowing both replicas and the other sentinels",
                Duration::from_secs(20),
                || {
                    let Some(out) = cli(s.port(), &["SENTINEL", "master", MASTER_NAME]) else {
                        return false;
                    };
                    let lines: Vec<&str> = out.lines().collect();
                    let field = |name: &str| {
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .copied()
                    };
                    field("num-slaves") == Some("2")
                        && field("num-other-sentinels") == Some("2")
                        && field("flags") == Some("master")
                },
            );
        }
    }

    /// The sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| s.url().to_owned()).collect()
    }

    /// The master's port as the first sentinel that answers names it.
    ///
    /// # Panics
    /// If no sentinel names one.
    pub fn master_port(&self) -> u16 {
        for s in &self.sentinels {
            let Some(out) = cli(
                s.port(),
                &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
            ) else {
                continue;
            };
            if let Some(port) = out.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                return port;
            }
        }
        panic!("no sentinel names a master");
    }

    /// The replicas' ports (the data nodes that are not the master now).
    pub fn replica_ports(&self) -> Vec<u16> {
        let master = self.master_port();
        self.lock()
            .iter()
            .map(Server::port)
            .filter(|&p| p != master)
            .collect()
    }

    /// The replicas' URLs.
    pub fn replica_urls(&self) -> Vec<String> {
        self.replica_ports()
            .into_iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Freezes (SIGSTOP) or resumes both replicas: frozen, they take no replication
    /// stream and acknowledge nothing; resumed, they catch up.
    pub fn freeze_replicas(&self, frozen: bool) {
        let master = self.master_port();
        for n in self.lock().iter().filter(|n| n.port() != master) {
            n.freeze(frozen);
        }
    }

    /// The master's URL (`redis://127.0.0.1:<port>`), as the sentinels name it now.
    pub fn master_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.master_port())
    }

    /// The failover that loses writes unless they waited for replicas: both replicas
    /// freeze (SIGSTOP) and the primary drops its replication links (`CLIENT KILL TYPE
    /// replica`) — a partition between the primary and its replicas — for `lag`, while the
    /// primary goes on acknowledging writes; then the
    /// primary is killed (SIGKILL) and the replicas resume. The sentinels agree it is down
    /// and promote a replica (about a second); the old primary then comes back, empty, as a
    /// replica of the new one. Returns once the group is settled again.
    ///
    /// # Panics
    /// If the sentinels do not promote a replica within 20 s.
    pub fn fail_over(&self, lag: Duration) {
        let old = self.master_port();
        {
            let nodes = self.lock();
            let replicas: Vec<&Server> = nodes.iter().filter(|n| n.port() != old).collect();
            for r in &replicas {
                r.freeze(true);
            }
            // Frozen, they would still find in their sockets what the primary sent after
            // the freeze: cut the links (frozen, they cannot dial back in), so what the
            // primary acknowledges from now on exists on the primary only.
            let _ = cli(old, &["CLIENT", "KILL", "TYPE", "replica"]);
            std::thread::sleep(lag);
            if let Some(primary) = nodes.iter().find(|n| n.port() == old) {
                primary.kill();
            }
            for r in &replicas {
                r.freeze(false);
            }
        }
        wait_for(
            "the sentinels promoting a replica",
            Duration::from_secs(20),
            || {
                self.sentinels.iter().all(|s| {
                    cli(
                        s.port(),
                        &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
                    )
                    .and_then(|o| o.lines().nth(1).map(str::to_owned))
                    .is_some_and(|p| p.trim() != old.to_string())
                })
            },
        );
        let new = self.master_port();
        wait_for(
            "the new master taking writes",
            Duration::from_secs(20),
            || info_field(new, "role").as_deref() == Some("master"),
        );
        let restarted = self.node(old, Some(new));
        {
            let mut nodes = self.lock();
            nodes.retain(|n| n.port() != old);
            nodes.push(restarted);
        }
        self.settle();
    }
}

impl Drop for ReplicatedRedis {
    fn drop(&mut self) {
        for s in &self.sentinels {
            s.kill();
        }
        for n in self.lock().iter() {
            n.kill();
        }
        if std::thread::panicking() {
            eprintln!("the sentinels' logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
