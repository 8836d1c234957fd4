//! Server CPU per operation: the user + system CPU time of the server's processes
//! (`/proc/<pid>/stat`), read before and after each timed run and divided by the operations
//! the run completed. It counts everything the server spends — parsing, networking, the
//! command, Lua — not only the command time `INFO commandstats` reports.

use std::path::Path;

/// Which processes make up a server.
#[derive(Debug, Clone)]
pub enum Server {
    /// A `redis-server`/`valkey-server` listening on this port (its title names the port).
    RedisLike { port: u16 },
    /// Every `postgres` process (postmaster, backends, WAL writer, …).
    Postgres,
    /// The MariaDB or MySQL server process.
    Mysql,
}

impl Server {
    /// The Redis/Valkey server of a `redis://host:port` URL.
    pub fn from_redis_url(url: &str) -> Option<Server> {
        let hostport = url.trim_start_matches("redis://").split('/').next()?;
        let port = hostport.rsplit(':').next()?.parse().ok()?;
        Some(Server::RedisLike { port })
    }

    fn matches(&self, comm: &str, cmdline: &str) -> bool {
        match self {
            Server::RedisLike { port } => {
                (comm.starts_with("redis-server") || comm.starts_with("valkey-server"))
                    && cmdline.contains(&format!(":{port}"))
            }
            Server::Postgres => comm == "postgres",
            Server::Mysql => comm == "mariadbd" || comm == "mysqld",
        }
    }

    /// CPU seconds used so far by the server's processes (`None`: no /proc, or none found).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let ticks = clock_ticks();
        let mut total = 0u64;
        let mut found = false;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let path = entry.path();
            let is_pid = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if !is_pid {
                continue;
            }
            let Some((comm, used)) = stat(&path) else {
                continue;
            };
            let cmdline = std::fs::read(path.join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            if self.matches(&comm, &cmdline) {
                total += used;
                found = true;
            }
        }
        found.then(|| total as f64 / ticks)
    }
}

/// CPU seconds this process (the application side: middleware, store client, driver, and
/// the load generator, which is the same for every contender) has used so far.
pub fn own_cpu_seconds() -> Option<f64> {
    stat(Path::new("/proc/self")).map(|(_, t)| t as f64 / clock_ticks())
}

/// `comm` and `utime + stime` (ticks) of one process.
fn stat(dir: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(dir.join("stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    // After the comm: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless configured otherwise).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
