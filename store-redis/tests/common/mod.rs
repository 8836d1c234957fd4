//! Shared test helpers: a private `redis-server` a test starts (and kills) itself, and a
//! MONITOR-based command recorder.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coatcheck_conformance::Backend;
use futures_util::StreamExt as _;

/// Whether a `redis-server` binary is available; if not, prints a skip line (or panics when
/// `COATCHECK_REQUIRE_BACKENDS` requires redis).
pub fn have_redis_server() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let msg = "skipped: no redis-server binary on PATH for a private server";
        if Backend::Redis.is_required() {
            panic!("{msg}, but COATCHECK_REQUIRE_BACKENDS requires redis");
        }
        eprintln!("{msg}");
    }
    found
}

/// A `redis-server` of our own on a free loopback port, killed on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let mut server = PrivateRedis {
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("private redis-server on port {} did not come up", self.port);
    }

    /// SIGKILL: the server is gone at once, connections reset.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP / SIGCONT: the server hangs with its sockets open.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} failed");
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen server would not die from SIGTERM; SIGKILL works either way.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Records the commands that reach one server, through MONITOR.
pub struct Recorder {
    lines: std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>,
    marker_conn: redis::aio::MultiplexedConnection,
    n: u64,
    /// The server's URL.
    pub url: String,
}

/// One command seen by MONITOR.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Issued by a Lua script (`[0 lua]`), not by a client.
    pub from_lua: bool,
    /// The command name, upper case.
    pub name: String,
    /// The whole MONITOR line.
    pub line: String,
}

impl Recorder {
    pub async fn new(url: &str) -> Recorder {
        let client = redis::Client::open(url).expect("url");
        let monitor = client.get_async_monitor().await.expect("MONITOR");
        let marker_conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("marker connection");
        Recorder {
            lines: Box::pin(monitor.into_on_message::<String>()),
            marker_conn,
            n: 0,
            url: url.to_owned(),
        }
    }

    /// Everything the server executed since the last call (up to a marker command sent now),
    /// except the marker itself.
    pub async fn take(&mut self) -> Vec<Seen> {
        self.n += 1;
        let marker = format!("coatcheck-marker-{}", self.n);
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut self.marker_conn)
            .await
            .expect("ECHO marker");
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next())
                .await
                .expect("MONITOR line within 10 s")
                .expect("MONITOR stream open");
            if line.contains(&marker) {
                return seen;
            }
            seen.push(parse_line(line));
        }
    }
}

fn parse_line(line: String) -> Seen {
    // 1700000000.123456 [0 127.0.0.1:54321] "EVALSHA" "..." ...
    let from_lua = line.contains(" lua]");
    let name = line
        .split_once("] \"")
        .and_then(|(_, rest)| rest.split('"').next())
        .unwrap_or("")
        .to_ascii_uppercase();
    Seen {
        from_lua,
        name,
        line,
    }
}

/// The top-level (client-issued) command names, in order.
pub fn client_commands(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| !s.from_lua)
        .map(|s| s.name.clone())
        .collect()
}

/// The commands the scripts ran, in order.
pub fn script_commands(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.from_lua)
        .map(|s| s.name.clone())
        .collect()
}
