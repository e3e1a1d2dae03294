//! The end-to-end harness: a real `confab` server, spawned in-process on
//! port 0 over its own database, driven over real HTTP.
//!
//! Each [`TestApp`] runs on its own thread and runtime, so dropping it
//! stops the server gracefully (and joins it) before its database is
//! dropped, whatever runtime the test itself uses.

#![allow(clippy::expect_used, clippy::panic)] // test support: failing loudly is the point

pub mod browser;
pub mod chat;
pub use confab_testkit::fake_llm;
pub mod haproxy;
pub mod load;
pub mod nginx;
pub mod proxy;
pub mod redis_cluster;
pub mod scripted;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use confab_server::{Application, Settings};
use confab_sql::Backend;
use confab_sql::testing::TestDatabase;

/// The signing secret of the test servers (tests forge tokens with it).
pub const JWT_SECRET: &str = "e2e-test-secret-0123456789abcdef-0123456789";

/// The origin the test servers allow for CORS.
pub const ALLOWED_ORIGIN: &str = "https://chat.example.com";

/// Everything every test server logs, in this process (JSON lines).
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs (once) a subscriber that records every log line of the
/// process at `info` and above, as the server would emit them (its JSON
/// lines).
fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Capture(buffer.clone());
        let _ = tracing_subscriber::fmt()
            .fmt_fields(confab_server::telemetry::JsonSpanFields)
            .event_format(confab_server::telemetry::JsonLines)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(move || sink.clone())
            .try_init();
        buffer
    })
    .clone()
}

/// Every log line the test servers of this process have written so far.
#[must_use]
pub fn captured_logs() -> String {
    String::from_utf8_lossy(
        &capture_logs()
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    )
    .into_owned()
}

/// A running server and what a test needs to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:<port>` of the API.
    pub address: String,
    /// `http://127.0.0.1:<port>` of the metrics listener.
    pub metrics_address: String,
    /// A client that follows no redirects.
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The `confab serve` process, for an instance started as one.
    process: Option<std::process::Child>,
    /// The server's database (shared with [`TestApp::sibling`]s).
    pub db: Arc<TestDatabase>,
    settings: Settings,
    vars: HashMap<String, String>,
}

/// Starts a server on `backend` with the test configuration plus `extra`
/// environment variables.
///
/// # Panics
/// When the database or the server can't start.
#[must_use]
pub fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    spawn_app_on(TestDatabase::new(backend), extra)
}

/// Starts a server on an existing test database (as after a restart),
/// with the test configuration plus `extra` environment variables.
///
/// # Panics
/// When the server can't start.
#[must_use]
pub fn spawn_app_on(db: TestDatabase, extra: &[(&str, &str)]) -> TestApp {
    spawn_on(Arc::new(db), extra)
}

/// The Redis the tests use: a node of the Redis Cluster
/// `CONFAB_TEST_REDIS_CLUSTER` names (`make test-redis-cluster`), else
/// `REDIS_URL`, else the local one. A server given this URL as its
/// `REDIS_URL` is told it is a cluster's ([`redis_cluster`]).
#[must_use]
pub fn redis_url() -> String {
    std::env::var("CONFAB_TEST_REDIS_CLUSTER")
        .or_else(|_| std::env::var("REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether the tests' Redis ([`redis_url`]) is a cluster.
#[must_use]
pub fn redis_cluster() -> bool {
    std::env::var_os("CONFAB_TEST_REDIS_CLUSTER").is_some()
}

/// Starts a server on `backend` sharing its state through the test Redis,
/// under a key prefix of its own (its [`TestApp::sibling`]s share it).
///
/// # Panics
/// When the database or the server can't start.
#[must_use]
pub fn spawn_app_with_redis(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    let url = redis_url();
    let prefix = format!("confab-e2e:{}:", uuid::Uuid::new_v4());
    let mut vars = vec![
        ("REDIS_URL", url.as_str()),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
    ];
    vars.extend_from_slice(extra);
    spawn_app_with(backend, &vars)
}

impl TestApp {
    /// A second server on the same database with the same configuration
    /// (the same Redis and key prefix, when it has one) plus `extra`: two
    /// instances of one service.
    ///
    /// # Panics
    /// When the server can't start.
    #[must_use]
    pub fn sibling(&self, extra: &[(&str, &str)]) -> TestApp {
        let mut vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        vars.extend_from_slice(extra);
        spawn_on(Arc::clone(&self.db), &vars)
    }
}

impl TestApp {
    /// The Redis key prefix this server writes under, when it has Redis.
    #[must_use]
    pub fn redis_key_prefix(&self) -> Option<String> {
        let redis = &self.settings.redis;
        (!secrecy::ExposeSecret::expose_secret(&redis.url).is_empty())
            .then(|| redis.key_prefix.clone())
    }
}

impl TestApp {
    /// The keys under this server's Redis prefix that contain one of
    /// `needles`, read with `SCAN` (none without Redis).
    ///
    /// # Panics
    /// When Redis can't be read.
    pub async fn redis_keys_containing(&self, needles: &[String]) -> Vec<String> {
        let Some(prefix) = self.redis_key_prefix() else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for url in redis_scan_urls().await {
            let client = redis::Client::open(url).expect("the Redis URL");
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("a Redis connection");
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .expect("SCAN");
                found.extend(
                    keys.into_iter()
                        .filter(|key| needles.iter().any(|n| key.contains(n.as_str()))),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        found
    }
}

/// The Redis servers whose keys together are the tests' Redis: it alone,
/// or a cluster's primaries.
async fn redis_scan_urls() -> Vec<String> {
    if !redis_cluster() {
        return vec![redis_url()];
    }
    let client = redis::Client::open(redis_url()).expect("the Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a Redis connection");
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    redis_cluster::primaries(&nodes)
        .into_iter()
        .filter(|p| !p.failed)
        .map(|p| format!("redis://{}", p.address))
        .collect()
}

/// The test configuration on `db`, plus `extra`.
fn test_vars(db: &TestDatabase, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = HashMap::from([
        ("CONFAB_CONFIG_DIR".to_owned(), "/nonexistent".to_owned()),
        ("CONFAB_JWT_SECRET".to_owned(), JWT_SECRET.to_owned()),
        ("DATABASE_URL".to_owned(), db.url().to_owned()),
        ("CONFAB__SERVER__WORKERS".to_owned(), "1".to_owned()),
        // No model unless a test wires one (a fake upstream, or the built-in
        // model by name): most tests don't chat.
        ("CONFAB_LLM_PROVIDER".to_owned(), "none".to_owned()),
        // A running answer left behind by a test delays its server's stop
        // by this much before it is stopped (docs/operations.md,
        // "Shutdown"); tests of the shutdown set their own.
        (
            "CONFAB__SERVER__SHUTDOWN_TIMEOUT_SECS".to_owned(),
            "1".to_owned(),
        ),
        (
            "CONFAB__CORS__ALLOWED_ORIGINS".to_owned(),
            ALLOWED_ORIGIN.to_owned(),
        ),
        // Tests register their users from one address; the registration
        // limits have tests of their own (e2e `register::`).
        (
            "CONFAB__RATE_LIMIT__REGISTER_PER_MINUTE".to_owned(),
            "100000".to_owned(),
        ),
        (
            "CONFAB__RATE_LIMIT__REGISTER_OVERALL_PER_MINUTE".to_owned(),
            "100000".to_owned(),
        ),
    ]);
    if db.pooled() {
        // Behind PgBouncer in transaction mode, as docs/operations.md says.
        vars.insert(
            "DATABASE_MIGRATION_URL".to_owned(),
            db.direct_url().to_owned(),
        );
        vars.insert(
            "CONFAB__DATABASE__PREPARED_STATEMENTS".to_owned(),
            "false".to_owned(),
        );
    }
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    if redis_cluster() && vars.get("REDIS_URL") == Some(&redis_url()) {
        vars.entry("REDIS_CLUSTER".to_owned())
            .or_insert_with(|| "true".to_owned());
    }
    vars
}

fn spawn_on(db: Arc<TestDatabase>, extra: &[(&str, &str)]) -> TestApp {
    let given: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let vars = test_vars(&db, extra);
    capture_logs();
    // The model client's TLS backend is the process's: install it before
    // any client (ours or the server's) is built.
    confab_server::install_tls_provider();
    let settings = Settings::load(&vars).expect("test settings");
    let kept = settings.clone();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the API port");
    let metrics = TcpListener::bind("127.0.0.1:0").expect("bind the metrics port");
    let (ports_tx, ports_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("confab-rt")
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let app = match Application::build(&settings, listener, Some(metrics)).await {
                Ok(app) => app,
                Err(e) => {
                    let _ = ports_tx.send(Err(e.to_string()));
                    return;
                }
            };
            // As an orchestrator waits for /readyz: a test starts once the
            // built-in model (when it is the provider) is loaded.
            if let Err(e) = app.model_ready().await {
                let _ = ports_tx.send(Err(e));
                return;
            }
            let _ = ports_tx.send(Ok((app.port(), app.metrics_port().unwrap_or(0))));
            let _ = app
                .run_until(
                    async {
                        let _ = stop_rx.await;
                    },
                    std::future::pending(),
                )
                .await;
        });
    });
    let (port, metrics_port) = ports_rx
        .recv()
        .expect("server thread")
        .unwrap_or_else(|e| panic!("the server did not start: {e}"));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        metrics_address: format!("http://127.0.0.1:{metrics_port}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client"),
        stop: Some(stop_tx),
        thread: Some(thread),
        process: None,
        db,
        settings: kept,
        vars: given,
    }
}

/// Starts a server on `backend` with the test configuration.
///
/// # Panics
/// When the database or the server can't start.
#[must_use]
pub fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[])
}

impl TestApp {
    /// The URL of `path` on the API.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `POST path` with a JSON body.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// `POST path` with raw bytes and, when given, that `Content-Type`.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("POST")
    }

    /// The metrics listener's Prometheus text.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.metrics_address);
        self.client
            .get(url)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// `GET path`.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    /// Registers `username` with a valid e-mail and password.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn register(&self, username: &str) -> reqwest::Response {
        let body = serde_json::json!({
            "username": username,
            "email": format!("{username}@example.com"),
            "password": "correct horse battery staple",
        });
        self.post_json("/api/v1/auth/register", &body).await
    }
}

impl TestApp {
    /// Creates an admin through `confab create-admin`'s code path.
    ///
    /// # Panics
    /// When the admin can't be created.
    pub async fn create_admin(&self, username: &str, password: &str) {
        let password = confab_domain::Password::presented(password).expect("password");
        confab_server::create_admin(
            self.settings.clone(),
            username.to_owned(),
            format!("{username}@example.com"),
            password,
        )
        .await
        .expect("create admin");
    }

    /// Logs in and returns the parsed token body.
    ///
    /// # Panics
    /// When the login is not a 200.
    pub async fn login(&self, username: &str, password: &str) -> serde_json::Value {
        let res = self
            .post_json(
                "/api/v1/auth/login",
                &serde_json::json!({"username": username, "password": password}),
            )
            .await;
        assert_eq!(res.status(), 200, "login of {username}");
        res.json().await.expect("token body")
    }

    /// `GET path` with a bearer token.
    ///
    /// # Panics
    /// When the request can't be sent.
    pub async fn get_auth(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }
}

/// The `confab` binary the workspace build made (`cargo test --workspace`
/// builds it; run `cargo build --bin confab` first when testing this crate
/// alone): next to the running executable (a binary such as
/// `confab-bench`), else one directory up (a test, in `deps/`).
///
/// # Panics
/// When it isn't there.
#[must_use]
pub fn confab_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/confab-bench → target/<profile>/confab;
    // target/<profile>/deps/<test> → target/<profile>/confab.
    let dir = exe.parent().expect("the target directory");
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join("confab"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no confab binary next to {} or one directory up: build it with \
                 `cargo build --bin confab` (with `--release` for confab-bench)",
                exe.display()
            )
        })
}

/// Starts `confab serve` as a process of its own on `db` with the test
/// configuration plus `extra` (one instance of a cluster), and waits until
/// it answers `/healthz`. Dropping the app stops it with SIGTERM;
/// [`TestApp::kill`] kills it.
///
/// # Panics
/// When it can't start.
pub async fn spawn_process(db: Arc<TestDatabase>, extra: &[(&str, &str)]) -> TestApp {
    // Both held at once while their ports are read: a port let go and
    // asked for again can come back, and the two addresses must differ.
    let bind = || TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (api, metrics) = (bind(), bind());
    let port_of = |l: &TcpListener| l.local_addr().expect("a bound address").port();
    let (port, metrics_port) = (port_of(&api), port_of(&metrics));
    drop((api, metrics));
    let listen = format!("127.0.0.1:{port}");
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut given: Vec<(&str, &str)> = extra.to_vec();
    given.push(("CONFAB_LISTEN", &listen));
    given.push(("CONFAB_METRICS_LISTEN", &metrics_listen));
    given.push(("CONFAB__LOG__FILTER", "warn"));
    let vars = test_vars(&db, &given);
    let settings = Settings::load(&vars).expect("test settings");
    // This process's HTTP clients need the TLS backend installed first.
    confab_server::install_tls_provider();
    let mut app = TestApp {
        address: format!("http://{listen}"),
        metrics_address: format!("http://{metrics_listen}"),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client"),
        stop: None,
        thread: None,
        process: None,
        db,
        settings,
        vars: extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    };
    app.start_process(&vars).await;
    app
}

/// Three `confab serve` processes of one service, on one fresh PostgreSQL
/// database and the test Redis under a key prefix of their own starting
/// `prefix`, answering with the fake model at `llm_base_url`, trusting
/// 127.0.0.1 as their balancer (clients come from other loopback
/// addresses); `extra` on top. The first migrates, the others find the
/// schema in place.
///
/// # Panics
/// When one can't start.
pub async fn three_behind_a_balancer(
    prefix: &str,
    llm_base_url: &str,
    extra: &[(&str, &str)],
) -> Vec<TestApp> {
    let db = Arc::new(TestDatabase::postgres());
    let prefix = format!("{prefix}:{}:", uuid::Uuid::new_v4());
    let url = redis_url();
    let mut vars = vec![
        ("REDIS_URL", url.as_str()),
        ("CONFAB__REDIS__KEY_PREFIX", prefix.as_str()),
        ("CONFAB_LLM_PROVIDER", "openai"),
        ("CONFAB_LLM_BASE_URL", llm_base_url),
        ("CONFAB_LLM_MODEL", "fake-model"),
        ("CONFAB__LLM__TITLE_GENERATION", "false"),
        ("CONFAB__LLM__IDLE_TIMEOUT_MS", "30000"),
        ("CONFAB__GENERATION__FLUSH_INTERVAL_MS", "50"),
        ("CONFAB__GENERATION__PER_MINUTE", "100000"),
        ("CONFAB__SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
    ];
    vars.extend_from_slice(extra);
    let mut instances = Vec::with_capacity(3);
    for _ in 0..3 {
        instances.push(spawn_process(Arc::clone(&db), &vars).await);
    }
    instances
}

impl TestApp {
    /// Starts `confab serve` with `vars` (its whole environment) and waits
    /// until it answers `/healthz` at [`TestApp::address`].
    async fn start_process(&mut self, vars: &HashMap<String, String>) {
        let process = std::process::Command::new(confab_binary())
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start confab serve");
        self.process = Some(process);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let exited = self
                .process
                .as_mut()
                .and_then(|p| p.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "confab serve on {} exited at start-up: {exited:?}",
                self.address
            );
            if let Ok(res) = self.client.get(self.url("/healthz")).send().await
                && res.status() == 200
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "confab serve on {} did not start",
                self.address
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Starts again, on the same addresses and with the same
    /// configuration, an instance started with [`spawn_process`] that has
    /// since stopped (a deploy's restart).
    ///
    /// # Panics
    /// When it is still running, was not started as a process, or can't
    /// start.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "the instance is still running");
        let listen = self.address.trim_start_matches("http://").to_owned();
        let metrics_listen = self
            .metrics_address
            .trim_start_matches("http://")
            .to_owned();
        let mut given: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        given.push(("CONFAB_LISTEN", &listen));
        given.push(("CONFAB_METRICS_LISTEN", &metrics_listen));
        given.push(("CONFAB__LOG__FILTER", "warn"));
        let vars = test_vars(&self.db, &given);
        self.start_process(&vars).await;
    }

    /// Sends SIGTERM to the instance's process and returns at once (it
    /// drains and shuts down meanwhile); [`TestApp::exited`] waits for it.
    ///
    /// # Panics
    /// When it was not started as a process or is gone.
    pub fn terminate(&self) {
        let pid = self.pid().expect("an instance running as a process");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM was not delivered");
    }

    /// Waits for the instance's process to exit (after
    /// [`TestApp::terminate`]) and returns how it exited.
    ///
    /// # Panics
    /// When it was not started as a process.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let mut process = self
            .process
            .take()
            .expect("an instance running as a process");
        let waiting = tokio::task::spawn_blocking(move || process.wait());
        tokio::time::timeout(std::time::Duration::from_secs(120), waiting)
            .await
            .expect("the process exits within 2 minutes")
            .expect("the waiting task")
            .expect("the process's exit status")
    }

    /// The process id of the `confab serve` process, for an instance started
    /// with [`spawn_process`] (`None` for one running in this process, or
    /// once stopped).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(std::process::Child::id)
    }

    /// Kills the server's process with SIGKILL (no drain, no shutdown: a
    /// crash) and waits for it to be gone. For an instance started with
    /// [`spawn_process`].
    ///
    /// # Panics
    /// When it was not started as a process, or can't be killed.
    pub fn kill(&mut self) {
        let mut process = self
            .process
            .take()
            .expect("an instance started as a process");
        process.kill().expect("SIGKILL");
        process.wait().expect("the killed process");
    }

    /// Stops the server as SIGTERM would (gracefully) and waits for it;
    /// the database stays until the app is dropped.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            let _ = process.wait();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads an error response and checks the one error shape: `code` as
/// expected and `request_id` equal to the `X-Request-Id` header. Returns
/// the `error` object.
///
/// # Panics
/// When the response is not in the error shape.
pub async fn error_body(res: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let header_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("X-Request-Id on an error response");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = res.json().await.expect("a JSON error body");
    let error = body
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("no `error` in {body}"));
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(error["request_id"], header_id.as_str(), "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error
}

/// The messages of `conversation`'s current branch in `store`, oldest
/// first (every message, for a conversation that never branched).
///
/// # Panics
/// When the store fails.
pub async fn all_messages(
    store: &confab_sql::SqlStore,
    conversation: confab_domain::ConversationId,
) -> Vec<confab_domain::Message> {
    confab_ports::MessageStore::page(store, conversation, None, usize::MAX)
        .await
        .expect("the store answers")
        .messages
}

/// A finished message of `role` with `text`, id `id`, in `conversation`,
/// as a send would have stored it (for storing directly).
///
/// # Panics
/// When `id` or `text` is not valid.
#[must_use]
pub fn finished_message(
    conversation: confab_domain::ConversationId,
    id: &str,
    role: confab_domain::MessageRole,
    text: String,
) -> confab_domain::Message {
    let now = confab_domain::OffsetDateTime::now_utc();
    confab_domain::Message {
        id: confab_domain::MessageId::parse(id).expect("a message id"),
        conversation_id: conversation,
        parent_id: None,
        role,
        content: confab_domain::Content::text(vec![text]).expect("message text"),
        status: confab_domain::MessageStatus::FinishedSuccessfully,
        model_slug: None,
        metadata: confab_domain::MessageMetadata::new(),
        created_at: now,
        updated_at: now,
    }
}

/// Stores `message` at the end of its conversation's current branch (its
/// parent the current node), as a send would have.
///
/// # Panics
/// When the store fails.
pub async fn append(store: &confab_sql::SqlStore, mut message: confab_domain::Message) {
    let end = confab_ports::MessageStore::page(store, message.conversation_id, None, 1)
        .await
        .expect("the current branch");
    message.parent_id = end.messages.last().map(|m| m.id.clone());
    confab_ports::MessageStore::insert(store, &message)
        .await
        .expect("a stored message");
}
