//! A Redis Cluster with replicas of the test's own: three masters and three replicas on free
//! loopback ports (`cluster-node-timeout` 3000 ms: at 1000, on two loaded cores, nodes marked each other
//! failed and the cluster went down again after a failover had settled), for failovers — a replica taking over on
//! `CLUSTER FAILOVER`, and a master killed so that its replica is promoted.

use std::path::PathBuf;
use std::time::Duration;

use super::replicated::{cli, wait_for};
use super::{free_port, missing, redis_args, redis_ping, runs, Server};
use crate::harness::Backend;

/// Three masters, each with one replica, killed and their files removed on drop.
///
/// ```no_run
/// use coatcheck_conformance::servers::ClusterWithReplicas;
///
/// let Some(cluster) = ClusterWithReplicas::redis() else { return }; // skipped
/// let urls = cluster.urls(); // every node
/// let promoted = cluster.failover_one(); // CLUSTER FAILOVER on a replica: its port
/// cluster.kill_a_master(); // SIGKILL; its replica takes over after the node timeout
/// # let _ = (urls, promoted);
/// ```
#[derive(Debug)]
pub struct ClusterWithReplicas {
    nodes: Vec<Server>,
    dir: PathBuf,
}

/// `(port, role)` of every node as `port` sees the cluster (`myself` included), from
/// `CLUSTER NODES`: role `master` or `slave`, failed nodes left out.
fn roles(port: u16) -> Vec<(u16, String)> {
    let Some(out) = cli(port, &["CLUSTER", "NODES"]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f.get(1)?;
            let p = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = f.get(2)?;
            if flags.contains("fail") {
                return None;
            }
            let role = if flags.contains("master") {
                "master"
            } else {
                "slave"
            };
            Some((p, role.to_owned()))
        })
        .collect()
}

impl ClusterWithReplicas {
    /// The cluster on Debian's `redis-server` and `redis-cli`; `None` (or a panic under
    /// `COATCHECK_REQUIRE_BACKENDS`) without them.
    pub fn redis() -> Option<ClusterWithReplicas> {
        if !runs(&PathBuf::from("redis-server"), "--version")
            || !runs(&PathBuf::from("redis-cli"), "--version")
        {
            return missing(Backend::Redis, "no redis-server and redis-cli on PATH");
        }
        let dir = std::env::temp_dir().join(crate::harness::unique_name("coatcheck-cluster"));
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let own = dir.join(format!("node-{port}"));
            #[allow(clippy::expect_used)] // a test fixture: failing loudly is the point
            std::fs::create_dir_all(&own).expect("create a node's directory");
            let mut args = redis_args(port);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "3000",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--dir",
                    &own.display().to_string(),
                    "--appendonly",
                    "no",
                ]
                .map(str::to_owned),
            );
            nodes.push(Server::start(
                "redis cluster node",
                format!("redis://127.0.0.1:{port}"),
                PathBuf::from("redis-server"),
                args,
                port,
                redis_ping,
                Duration::from_secs(10),
            ));
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"].map(str::to_owned));
        let ok = std::process::Command::new("redis-cli")
            .args(&create)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "redis-cli --cluster create failed");
        let cluster = ClusterWithReplicas { nodes, dir };
        cluster.settle();
        Some(cluster)
    }

    /// Waits until every node answers `cluster_state:ok` and sees three masters and three
    /// replicas.
    ///
    /// # Panics
    /// If that takes longer than 30 s.
    pub fn settle(&self) {
        for n in self.nodes.iter().filter(|n| redis_ping(n.port())) {
            wait_for("the cluster settled", Duration::from_secs(30), || {
                let ok = cli(n.port(), &["CLUSTER", "INFO"])
                    .is_some_and(|i| i.lines().any(|l| l.trim() == "cluster_state:ok"));
                let r = roles(n.port());
                ok && r.iter().filter(|(_, x)| x == "master").count() == 3
                    && r.iter().filter(|(_, x)| x == "slave").count() >= 2
            });
        }
    }

    /// Every node's URL (masters and replicas).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url().to_owned()).collect()
    }

    fn live(&self) -> u16 {
        #[allow(clippy::expect_used)]
        self.nodes
            .iter()
            .map(Server::port)
            .find(|&p| redis_ping(p))
            .expect("a live node")
    }

    /// `CLUSTER FAILOVER` on a replica (a coordinated switch: the master stops taking
    /// writes, the replica catches up and takes over); returns the new master's port once
    /// every live node sees it as master.
    ///
    /// # Panics
    /// If the switch does not happen within 20 s.
    pub fn failover_one(&self) -> u16 {
        let at = self.live();
        #[allow(clippy::expect_used)]
        let replica = roles(at)
            .into_iter()
            .find(|(_, r)| r == "slave")
            .map(|(p, _)| p)
            .expect("a replica");
        let _ = cli(replica, &["CLUSTER", "FAILOVER"]);
        wait_for("the replica promoted", Duration::from_secs(20), || {
            self.nodes
                .iter()
                .filter(|n| redis_ping(n.port()))
                .all(|n| roles(n.port()).contains(&(replica, "master".to_owned())))
        });
        self.settle();
        replica
    }

    /// Kills (SIGKILL) a master; returns its port once its replica is master for every
    /// live node (after `cluster-node-timeout`).
    ///
    /// # Panics
    /// If no replica takes over within 30 s.
    pub fn kill_a_master(&self) -> u16 {
        let at = self.live();
        #[allow(clippy::expect_used)]
        let master = roles(at)
            .into_iter()
            .find(|(_, r)| r == "master")
            .map(|(p, _)| p)
            .expect("a master");
        if let Some(n) = self.nodes.iter().find(|n| n.port() == master) {
            n.kill();
        }
        wait_for(
            "a replica taking over from the killed master",
            Duration::from_secs(30),
            || {
                self.nodes
                    .iter()
                    .filter(|n| n.port() != master && redis_ping(n.port()))
                    .all(|n| {
                        cli(n.port(), &["CLUSTER", "INFO"])
                            .is_some_and(|i| i.lines().any(|l| l.trim() == "cluster_state:ok"))
                            && roles(n.port())
                                .iter()
                                .filter(|(_, r)| r == "master")
                                .count()
                                == 3
                    })
            },
        );
        master
    }
}

impl Drop for ClusterWithReplicas {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
