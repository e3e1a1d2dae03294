//! A Redis Cluster of a test's own (three primaries, a replica each),
//! started by scripts/redis-cluster.sh on ports of its own, whose primaries
//! the test may kill: the replica takes over (within about two seconds:
//! the nodes time out after one), and the killed node, started again,
//! rejoins as a replica.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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
        let nodes = Self::cli(self.first, &["cluster", "nodes"]);
        nodes
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| {
                fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail")
            })
            .find(|fields| {
                fields[8..].iter().any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<u16>(), to.parse::<u16>()),
                        (Ok(from), Ok(to)) if (from..=to).contains(&slot))
                })
            })
            .and_then(|fields| {
                fields[1]
                    .split('@')
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse()
                    .ok()
            })
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
                Self::cli(*port, &["cluster", "nodes"])
                    .lines()
                    .map(|line| line.split_whitespace().collect::<Vec<_>>())
                    .filter(|fields| fields.len() > 8 && fields[2].contains("master"))
                    .all(|fields| {
                        let port = fields[1]
                            .split('@')
                            .next()
                            .and_then(|a| a.rsplit_once(':'))
                            .and_then(|(_, p)| p.parse::<u16>().ok());
                        !fields[2].contains("fail") && port.is_some_and(|p| live.contains(&p))
                    })
            });
            if states_ok && served {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not recover");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
