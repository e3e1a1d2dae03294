//! nginx, from the operating system's packages, as the load balancer in
//! front of several `confab serve` processes: its configuration is the one
//! docs/operations.md recommends ("Behind a load balancer"), with nginx's
//! default response buffering left on, so only Confab's
//! `X-Accel-Buffering: no` keeps an answer's stream unbuffered.
//!
//! `make proxy` (part of `make test`) installs it. A test that can't start
//! it fails, saying so.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx balancing round-robin over some upstreams.
pub struct Nginx {
    /// `http://127.0.0.1:<port>` of the balancer.
    pub address: String,
    process: Child,
    _dir: tempfile::TempDir,
}

/// The configuration the suite runs nginx with: `listen` in front of
/// `upstreams` (`host:port` each), files under `dir`.
#[must_use]
pub fn config(listen: &str, upstreams: &[String], dir: &std::path::Path) -> String {
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u} max_fails=0;\n"))
        .collect();
    let d = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         error_log {d}/error.log warn;\n\
         pid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {d}/body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   upstream confab {{\n\
         {servers}\
         \x20       keepalive 16;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       client_max_body_size 4m;\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://confab;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header Host $http_host;\n\
         \x20           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20           proxy_read_timeout 1h;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    )
}

impl Nginx {
    /// Starts nginx on a free port of 127.0.0.1 in front of `upstreams`
    /// (`http://host:port` or `host:port`), and waits until it answers.
    ///
    /// # Panics
    /// When nginx is missing or can't start.
    pub async fn start(upstreams: &[String]) -> Nginx {
        let binary = PathBuf::from("/usr/sbin/nginx");
        assert!(
            binary.exists(),
            "nginx is missing: run `make proxy` (Debian's nginx-light)"
        );
        let dir = tempfile::tempdir().expect("a directory for nginx");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let listen = format!("127.0.0.1:{port}");
        let upstreams: Vec<String> = upstreams
            .iter()
            .map(|u| u.trim_start_matches("http://").to_owned())
            .collect();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config(&listen, &upstreams, dir.path())).expect("nginx.conf");
        let process = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nginx = Nginx {
            address: format!("http://{listen}"),
            process,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(res) = client.get(nginx.url("/healthz")).send().await
                && res.status() == 200
            {
                return nginx;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nginx did not start: {}",
                std::fs::read_to_string(nginx._dir.path().join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URL of `path` through the balancer.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
