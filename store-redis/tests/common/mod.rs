//! Shared test helpers: a private `redis-server` a test starts (and kills) itself, and a
//! MONITOR-based command recorder.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt as _;

/// A `redis-server` of the test's own, on a free loopback port (see
/// [`coatcheck_conformance::servers`]): `start()` is `None` (a visible skip) without the
/// binary, and fails the test instead when CI requires redis.
#[allow(unused_imports)]
pub use coatcheck_conformance::servers::Server as PrivateRedis;

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

/// Commands that name one key prefix, on one node or across every master of a cluster.
pub struct PrefixRecorder {
    nodes: Vec<Recorder>,
    prefix: String,
}

impl PrefixRecorder {
    /// On the one server at `url`.
    pub async fn node(url: &str, prefix: &str) -> PrefixRecorder {
        PrefixRecorder {
            nodes: vec![Recorder::new(url).await],
            prefix: prefix.to_owned(),
        }
    }

    /// On every master of the cluster `url` belongs to (from the cluster's own view: the
    /// URLs a test was given may be a subset).
    pub async fn cluster(url: &str, prefix: &str) -> PrefixRecorder {
        let mut probe = redis::Client::open(url)
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("probe");
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut probe)
            .await
            .expect("nodes");
        let mut recorders = Vec::new();
        for line in nodes.lines().filter(|l| l.contains("master")) {
            let addr = line.split_whitespace().nth(1).expect("addr");
            let hostport = addr.split('@').next().expect("host:port");
            recorders.push(Recorder::new(&format!("redis://{hostport}")).await);
        }
        PrefixRecorder {
            nodes: recorders,
            prefix: prefix.to_owned(),
        }
    }

    /// What the servers executed since the last call that names the prefix.
    pub async fn take(&mut self) -> Vec<Seen> {
        let mut all = Vec::new();
        for n in &mut self.nodes {
            all.extend(
                n.take()
                    .await
                    .into_iter()
                    .filter(|s| s.line.contains(&self.prefix)),
            );
        }
        all
    }
}

/// The node URLs of `backend` (one for a node, several for a cluster), or `None` after a
/// visible skip (a failure when CI requires it).
pub async fn urls_of(backend: coatcheck_conformance::Backend) -> Option<Vec<String>> {
    use coatcheck_conformance::harness;
    if !harness::require(Some(backend)).await {
        return None;
    }
    let all = harness::url(backend).await.expect("checked");
    Some(
        all.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}
