//! A Redis Cluster of a test's own (three primaries, a replica each),
//! started by scripts/redis-cluster.sh on ports of its own, whose primaries
//! the test may kill: the replica takes over (within about two seconds:
//! the nodes time out after one), and the killed node, started again,
//! rejoins as a replica.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A primary with slots, as a line of `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// `host:port`.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Marked failed (`fail` or `fail?`) by the node asked.
    pub failed: bool,
    /// The slot ranges it serves, inclusive.
    pub slots: Vec<(u16, u16)>,
}

/// The primaries with slots that `CLUSTER NODES`' reply `nodes` lists.
#[must_use]
pub fn primaries(nodes: &str) -> Vec<Primary> {
    nodes
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() > 8 && fields[2].contains("master"))
        .filter_map(|fields| {
            let address = fields[1].split(['@', ',']).next()?.to_owned();
            let port = address.rsplit_once(':')?.1.parse().ok()?;
            let slots = fields[8..]
                .iter()
                .filter_map(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    Some((from.parse().ok()?, to.parse().ok()?))
                })
                .collect();
            Some(Primary {
                address,
                port,
                failed: fields[2].contains("fail"),
                slots,
            })
        })
        .collect()
}

/// A cluster on `127.0.0.1:{first}` and the five ports after it.
#[derive(Debug, Clone)]
pub struct RedisCluster {
    first: u16,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts (or finds healthy) the cluster on `first` and the five ports
    /// after it, its files under the temporary directory.
    ///
    /// # Panics
    /// When it can't be started.
    #[must_use]
    pub fn start(first: u16) -> Self {
        let cluster = Self {
            first,
            dir: std::env::temp_dir().join(format!("confab-redis-cluster-{first}")),
        };
        let status = cluster
            .script()
            .status()
            .expect("run scripts/redis-cluster.sh");
        assert!(
            status.success(),
            "the Redis Cluster on {first} did not start"
        );
        cluster
    }

    fn script(&self) -> Command {
        let mut command = Command::new(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster.sh"),
        );
        command
            .env("CONFAB_REDIS_CLUSTER_PORT", self.first.to_string())
            .env("CONFAB_REDIS_CLUSTER_DIR", &self.dir);
        command
    }

    /// The URL of its first node (any node leads to the others).
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.first)
    }

    fn ports(&self) -> impl Iterator<Item = u16> {
        self.first..self.first + 6
    }

    /// `redis-cli -p port args…`'s output, empty when the node is down.
    fn cli(port: u16, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).replace('\r', ""))
            .unwrap_or_default()
    }

    /// The port of the primary that serves `key`'s slot.
    ///
    /// # Panics
    /// When no node says.
    #[must_use]
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = Self::cli(self.first, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        primaries(&Self::cli(self.first, &["cluster", "nodes"]))
            .into_iter()
            .find(|p| {
                !p.failed
                    && p.slots
                        .iter()
                        .any(|(from, to)| (*from..=*to).contains(&slot))
            })
            .map(|p| p.port)
            .unwrap_or_else(|| panic!("no primary serves {key}'s slot {slot}"))
    }

    /// Kills the node on `port` with SIGKILL (no goodbye to the others).
    ///
    /// # Panics
    /// When it has no process to kill.
    pub fn kill(&self, port: u16) {
        let info = Self::cli(port, &["info", "server"]);
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .expect("the node's process id")
            .trim()
            .to_owned();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -KILL {pid}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Self::cli(port, &["ping"]).trim() == "PONG" {
            assert!(Instant::now() < deadline, "the node on {port} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the killed node on `port` again: it rejoins as a replica.
    ///
    /// # Panics
    /// When it can't be started.
    pub fn restart(&self, port: u16) {
        let status = self
            .script()
            .args(["restart", &port.to_string()])
            .status()
            .expect("run scripts/redis-cluster.sh restart");
        assert!(status.success(), "the node on {port} did not start again");
    }

    /// Waits until every slot is served by a primary that answers, and
    /// every live node says the cluster is ok (after a kill: until the
    /// others have marked the dead primary failed and its replica took its
    /// slots).
    ///
    /// # Panics
    /// After 20 s.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let live: Vec<u16> = self
                .ports()
                .filter(|port| Self::cli(*port, &["ping"]).trim() == "PONG")
                .collect();
            let states_ok = !live.is_empty()
                && live.iter().all(|port| {
                    Self::cli(*port, &["cluster", "info"])
                        .lines()
                        .any(|l| l == "cluster_state:ok")
                });
            let served = live.iter().all(|port| {
                primaries(&Self::cli(*port, &["cluster", "nodes"]))
                    .iter()
                    .all(|p| !p.failed && live.contains(&p.port))
            });
            if states_ok && served {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not recover");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
