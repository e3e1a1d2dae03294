//! HAProxy, from the operating system's packages, as the load balancer of
//! the rolling restarts: its configuration is the one docs/operations.md
//! recommends ("Rolling restarts"). It health-checks every instance's
//! `/readyz` every 250 ms and takes one out of rotation after two 503s,
//! so an instance draining after SIGTERM (`server.drain_secs`) is sent
//! nothing new before it stops listening.
//!
//! `make proxy` (part of `make test`) installs it. A test that can't start
//! it fails, saying so.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running HAProxy balancing round-robin over some instances.
pub struct HaProxy {
    /// `http://127.0.0.1:<port>` of the balancer.
    pub address: String,
    process: Child,
    _dir: tempfile::TempDir,
}

/// The configuration the suite runs HAProxy with: `listen` in front of
/// `upstreams` (`host:port` each).
#[must_use]
pub fn config(listen: &str, upstreams: &[String]) -> String {
    let servers: String = upstreams
        .iter()
        .enumerate()
        .map(|(n, u)| format!("    server confab{n} {u}\n"))
        .collect();
    format!(
        "global\n\
         \x20   maxconn 4096\n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 1h\n\
         \x20   timeout server 1h\n\
         \x20   timeout http-request 10s\n\
         \x20   timeout queue 10s\n\
         \x20   option forwardfor\n\
         \x20   retries 3\n\
         \x20   option redispatch 1\n\
         frontend confab_api\n\
         \x20   bind {listen}\n\
         \x20   default_backend confab\n\
         backend confab\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n\
         \x20   timeout check 500ms\n\
         \x20   default-server check inter 250ms fall 2 rise 2\n\
         {servers}"
    )
}

impl HaProxy {
    /// Starts HAProxy on a free port of 127.0.0.1 in front of `upstreams`
    /// (`http://host:port` or `host:port`), and waits until every one of
    /// them is in rotation.
    ///
    /// # Panics
    /// When HAProxy is missing or can't start.
    pub async fn start(upstreams: &[String]) -> HaProxy {
        let binary = PathBuf::from("/usr/sbin/haproxy");
        assert!(
            binary.exists(),
            "haproxy is missing: run `make proxy` (Debian's haproxy)"
        );
        let dir = tempfile::tempdir().expect("a directory for haproxy");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let listen = format!("127.0.0.1:{port}");
        let upstreams: Vec<String> = upstreams
            .iter()
            .map(|u| u.trim_start_matches("http://").to_owned())
            .collect();
        let conf = dir.path().join("haproxy.cfg");
        std::fs::write(&conf, config(&listen, &upstreams)).expect("haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let process = Command::new(binary)
            // Foreground, no daemon.
            .arg("-db")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy starts");
        let haproxy = HaProxy {
            address: format!("http://{listen}"),
            process,
            _dir: dir,
        };
        // Every instance in rotation: as many answers in a row as there
        // are instances, round-robin, each from another one.
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let mut ok = 0;
            for _ in 0..upstreams.len() {
                if let Ok(res) = client.get(haproxy.url("/readyz")).send().await
                    && res.status() == 200
                {
                    ok += 1;
                }
            }
            if ok == upstreams.len() {
                tokio::time::sleep(Duration::from_millis(600)).await;
                return haproxy;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "haproxy did not start: {}",
                std::fs::read_to_string(haproxy._dir.path().join("haproxy.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL of `path` through the balancer.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
