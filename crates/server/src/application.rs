//! Building and running the servers.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use confab_app::{Accounts, Conversations, Readiness, Registration};
use confab_domain::{Password, User};
use confab_http::{
    AllowedHosts, BodyLimits, CorsPolicy, HttpState, IdempotencyPolicy, Metrics, RateTiers,
    SecurityHeaders, SseSettings, WebPage,
};
use confab_llm::LoadingModel;
use confab_ports::HealthCheck;
use confab_sql::{PoolOptions, SqlError, SqlStore};
use secrecy::ExposeSecret;

use crate::settings::{ConfigError, ServerSettings, Settings};
use crate::wiring::{ChatWiring, Wired, conversations, cores, per_minute, wire};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The configuration is unusable.
    #[error("configuration error: {0}")]
    Config(#[from] ConfigError),
    /// The database could not be opened or migrated.
    #[error("{0}")]
    Database(#[from] SqlError),
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something else at start-up (hasher, metrics, OpenAPI document).
    #[error("{0}")]
    Setup(String),
    /// The server failed while running.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A built service: the API server and, when enabled, the metrics server,
/// bound and ready to run.
pub struct Application {
    store: Arc<SqlStore>,
    conversations: Conversations,
    accounts: Accounts,
    orphan_sweep: Duration,
    loading: Option<Arc<LoadingModel>>,
    readiness: Readiness,
    drain: Duration,
    answer_timeout: Duration,
    shutdown_grace: Duration,
    port: u16,
    metrics_port: Option<u16>,
    server: Server,
    metrics: Option<Server>,
}

impl Application {
    /// Opens the database, wires the adapters and binds the servers to the
    /// given listeners (bind port 0 in tests). Nothing is served until
    /// [`Application::run_until`].
    ///
    /// # Errors
    /// [`StartupError`] when the database, the hasher or a listener can't
    /// be set up.
    pub async fn build(
        settings: &Settings,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> Result<Self, StartupError> {
        let wired = wire(settings).await?;
        let store = Arc::clone(&wired.store);
        let chat = conversations(settings, &wired).await?;
        let conversations = chat.conversations.clone();
        conversations
            .close_orphans()
            .await
            .map_err(|e| StartupError::Setup(format!("closing orphaned generations: {e}")))?;
        let metrics = Metrics::new().map_err(|e| StartupError::Setup(format!("metrics: {e}")))?;
        let accounts = wired.accounts.clone();
        let state = http_state(settings, wired, &chat, metrics.clone())?;
        let readiness = state.readiness.clone();
        let port = listener.local_addr()?.port();
        // In-flight requests may outlast the running answers' timeout by
        // the time the answers then get to save themselves.
        let in_flight = settings.server.shutdown_timeout
            + settings.generation.shutdown_grace
            + Duration::from_secs(1);
        let server = api_server(&settings.server, in_flight, state, listener)?;
        let (metrics, metrics_port) = match metrics_listener {
            Some(listener) => {
                let port = listener.local_addr()?.port();
                (Some(metrics_server(metrics, listener)?), Some(port))
            }
            None => (None, None),
        };
        Ok(Self {
            store,
            conversations,
            accounts,
            orphan_sweep: settings.generation.orphan_sweep,
            loading: chat.loading,
            readiness,
            drain: settings.server.drain,
            answer_timeout: settings.server.shutdown_timeout,
            shutdown_grace: settings.generation.shutdown_grace,
            port,
            metrics_port,
            server,
            metrics,
        })
    }

    /// The API's port.
    #[must_use]
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The metrics listener's port, when enabled.
    #[must_use]
    pub const fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    /// Resolves once the service can answer: at once, or when the built-in
    /// model's weights are in.
    ///
    /// # Errors
    /// Why the built-in model could not be loaded.
    pub fn model_ready(&self) -> impl Future<Output = Result<(), String>> + 'static {
        let loading = self.loading.clone();
        async move {
            match loading {
                Some(model) => model.loaded().await.map(|_| ()),
                None => Ok(()),
            }
        }
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully:
    ///
    /// 1. `/readyz` answers 503 from then on; for `server.drain_secs` every
    ///    other request is still accepted and served, so that a balancer
    ///    takes the instance out of rotation first;
    /// 2. the listener closes; running answers get up to
    ///    `server.shutdown_timeout_secs` to complete, and in-flight requests
    ///    to finish;
    /// 3. answers still running then are stopped (each saves its text and
    ///    ends its stream, within `generation.shutdown_grace_secs`).
    ///
    /// `hurry` resolving (a second signal) skips what is left of the drain
    /// and of the wait for answers. A built-in model that fails to load
    /// stops the service the same way, with that error.
    ///
    /// # Errors
    /// When a server fails, or the built-in model can't be loaded.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
        hurry: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let ready = self.model_ready();
        // Stopped with this function, however it returns.
        let sweeper = AbortOnDrop(tokio::spawn(sweep_orphans(
            self.conversations.clone(),
            self.orphan_sweep,
        )));
        let session_sweeper = AbortOnDrop(tokio::spawn(sweep_sessions(self.accounts.clone())));
        let api = self.server.handle();
        let metrics = self.metrics.map(|server| {
            let handle = server.handle();
            // A server runs only while polled: the metrics one on its own task.
            (handle, tokio::spawn(server))
        });
        let model_failed = {
            async move {
                match ready.await {
                    Err(why) => why,
                    // Loaded: nothing more to watch.
                    Ok(()) => std::future::pending().await,
                }
            }
        };
        let server = self.server;
        tokio::pin!(server);
        let mut failure = None;
        tokio::select! {
            result = &mut server => return result,
            () = shutdown => {}
            why = model_failed => {
                tracing::error!(error = %why, "the built-in model could not be loaded: stopping");
                failure = Some(std::io::Error::other(format!(
                    "the built-in model could not be loaded: {why}"
                )));
            }
        }
        drop(session_sweeper);
        tokio::pin!(hurry);
        self.readiness.drain();
        let mut hurried = false;
        let mut ended_early = None;
        if failure.is_none() && !self.drain.is_zero() {
            tracing::info!(
                drain_secs = self.drain.as_secs(),
                "shutting down: /readyz answers 503 while load balancers drain this instance"
            );
            // The server must keep being polled while it drains.
            tokio::select! {
                result = &mut server => ended_early = Some(result),
                () = tokio::time::sleep(self.drain) => {}
                () = &mut hurry => hurried = true,
            }
        }
        let result = if let Some(result) = ended_early {
            // The server failed while draining: its answers are still saved.
            self.conversations.shutdown(self.shutdown_grace).await;
            result
        } else {
            tracing::info!(
                "shutting down: no longer accepting connections; draining in-flight requests and running answers"
            );
            let (http_done_tx, http_done) = tokio::sync::oneshot::channel::<()>();
            let stop = async {
                api.stop(true).await;
                let _ = http_done_tx.send(());
            };
            let answers = async {
                if failure.is_none() && !hurried {
                    // Requests in flight finish (a send not yet running
                    // its answer among them) and running answers complete,
                    // up to the timeout; only then is anything stopped.
                    let settled = async {
                        let _ = http_done.await;
                        self.conversations.idle().await;
                    };
                    tokio::select! {
                        done = tokio::time::timeout(self.answer_timeout, settled) => if done.is_err() {
                            tracing::warn!("answers still running after server.shutdown_timeout_secs: stopping them");
                        },
                        () = &mut hurry => tracing::info!("second signal: stopping running answers now"),
                    }
                }
                // Each saves its text and ends its stream, so the requests
                // following them end too.
                self.conversations.shutdown(self.shutdown_grace).await;
            };
            let (result, (), ()) = tokio::join!(&mut server, stop, answers);
            result
        };
        drop(sweeper);
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            if let Ok(Err(e)) = task.await {
                tracing::warn!(error = %e, "metrics server stopped with an error");
            }
        }
        // The database threads close their connections before the process
        // exits (an exit racing them crashed in libpq's clean-up).
        let store = Arc::clone(&self.store);
        if tokio::task::spawn_blocking(move || store.close())
            .await
            .is_err()
        {
            tracing::warn!("the database store did not close cleanly");
        }
        tracing::info!("stopped");
        match failure {
            Some(e) => Err(e),
            None => result,
        }
    }
}

/// A task that is aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes answers no generation holds any more every `every`, for as
/// long as the service runs (the first sweep ran at start-up).
async fn sweep_orphans(conversations: Conversations, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: start-up has just swept.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if let Err(e) = conversations.close_orphans().await {
            tracing::warn!(error = %e, "orphan sweep failed; retrying at the next one");
        }
    }
}

/// How often what is left of ended sessions is deleted.
const SESSION_SWEEP: Duration = Duration::from_secs(60 * 60);

/// Deletes what is left of ended sessions now and every
/// [`SESSION_SWEEP`], for as long as the service runs (every instance
/// does; a sweep finding nothing costs one statement or two).
async fn sweep_sessions(accounts: Accounts) {
    let mut ticks = tokio::time::interval(SESSION_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match accounts.sweep_sessions().await {
            Ok(0) => {}
            Ok(sessions) => tracing::info!(sessions, "swept ended sessions"),
            Err(e) => tracing::warn!(error = %e, "session sweep failed; retrying at the next one"),
        }
        match accounts.sweep_api_keys().await {
            Ok(0) => {}
            Ok(keys) => tracing::info!(keys, "swept expired API keys"),
            Err(e) => tracing::warn!(error = %e, "API key sweep failed; retrying at the next one"),
        }
    }
}

/// SIGTERM and SIGINT, registered before the server starts so that a
/// signal arriving during start-up is not lost (the default action would
/// kill the process without a drain).
pub struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Registers the handlers now.
    ///
    /// # Errors
    /// When a handler can't be registered.
    pub fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
    }
}

fn bind(addr: &str) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr).map_err(|source| StartupError::Bind {
        addr: addr.to_owned(),
        source,
    })
}

/// `confab serve`: binds the configured addresses and serves until SIGTERM
/// or SIGINT.
///
/// # Errors
/// [`StartupError`] when start-up fails or a server fails while running.
pub async fn serve(settings: Settings) -> Result<(), StartupError> {
    let mut signals = ShutdownSignals::register()?;
    let listener = bind(&settings.server.listen)?;
    let metrics_listener = if settings.metrics.enabled {
        Some(bind(&settings.metrics.listen)?)
    } else {
        None
    };
    if !settings.redis.url.expose_secret().is_empty() {
        tracing::warn!(
            "REDIS_URL is set: cache, limits, the token blocklist, answer streams and idempotency \
             keys are shared; running-answer counts are still per instance"
        );
    }
    let app = Application::build(&settings, listener, metrics_listener).await?;
    tracing::info!(
        api = %settings.server.listen,
        metrics = %if settings.metrics.enabled { settings.metrics.listen.as_str() } else { "disabled" },
        environment = %settings.environment,
        llm_provider = %settings.llm.provider,
        "confab is serving: docs at http://{}/docs",
        settings.server.listen,
    );
    let ready = app.model_ready();
    let listen = settings.server.listen.clone();
    let page = settings.web.enabled;
    tokio::spawn(async move {
        // The banner's curl line needs the model: print it once it's in.
        if ready.await.is_ok() {
            tracing::info!("ready");
            if std::io::IsTerminal::is_terminal(&std::io::stderr())
                || std::env::var_os("CONFAB_BANNER").is_some()
            {
                eprintln!("{}", banner(&listen, page));
            }
        }
    });
    // The first signal starts the graceful shutdown, a second hurries it.
    let (first_tx, first) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        signals.next().await;
        let _ = first_tx.send(());
        signals.next().await;
        let _ = second_tx.send(());
    });
    app.run_until(
        async move {
            let _ = first.await;
        },
        async move {
            let _ = second.await;
        },
    )
    .await?;
    Ok(())
}

/// What a person who just ran `make run` needs: where the chat page, the
/// API and its docs are, and one line that registers, logs in and streams
/// an answer.
fn banner(listen: &str, page: bool) -> String {
    let base = format!("http://{listen}");
    let chat = if page {
        format!("  chat: {base}/ (open it in a browser)\n")
    } else {
        String::new()
    };
    let json = "-H 'content-type: application/json'";
    let password = "correct horse battery staple";
    format!(
        "\nConfab is serving.\n{chat}  API:  {base}/api/v1\n  docs: {base}/docs\n\n\
         Register, log in and stream an answer:\n\n\
         curl -s {base}/api/v1/auth/register {json} -d '{{\"username\":\"demo\",\"email\":\"demo@example.com\",\"password\":\"{password}\"}}' >/dev/null; \
         TOKEN=$(curl -s {base}/api/v1/auth/login {json} -d '{{\"username\":\"demo\",\"password\":\"{password}\"}}' | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/'); \
         curl -sN {base}/api/v1/conversations -H \"authorization: Bearer $TOKEN\" {json} -d '{{\"messages\":[{{\"role\":\"user\",\"content\":{{\"content_type\":\"text\",\"parts\":[\"Tell me a fun fact about the ocean.\"]}}}}]}}'\n"
    )
}

/// `confab migrate`: applies pending migrations and exits.
///
/// # Errors
/// [`StartupError`] when the database can't be opened or migrated.
pub async fn migrate(settings: Settings) -> Result<usize, StartupError> {
    let options = settings.pool_options()?;
    // Straight to the migration URL when there is one: the pooler in
    // front of `database.url` is not needed, nor asked.
    let target = match &options.migration_target {
        Some(direct) => direct.clone(),
        None => settings.database_target()?,
    };
    let redacted = target.redacted();
    let options = PoolOptions {
        max_size: 1,
        migration_target: None,
        ..options
    };
    let store = SqlStore::open(target, options).await?;
    let applied = store.migrate().await?;
    tracing::info!(database = %redacted, applied, "migrations up to date");
    Ok(applied)
}

/// `confab create-admin`: opens an account with role `admin`.
///
/// # Errors
/// [`StartupError::Setup`] with the reason (a taken name, a weak
/// password) when the account can't be created.
pub async fn create_admin(
    settings: Settings,
    username: String,
    email: String,
    password: Password,
) -> Result<User, StartupError> {
    let wired = wire(&settings).await?;
    wired
        .accounts
        .create_admin(Registration {
            client: String::new(),
            username,
            email,
            password,
        })
        .await
        .map_err(|e| StartupError::Setup(format!("cannot create the admin: {e}")))
}

/// What the HTTP layer is given: the use cases, the readiness checks, and
/// the settings it applies, in their types.
fn http_state(
    settings: &Settings,
    wired: Wired,
    chat: &ChatWiring,
    metrics: Metrics,
) -> Result<HttpState, StartupError> {
    let mut checks: Vec<Arc<dyn HealthCheck>> = vec![wired.store];
    if let Some(redis) = &wired.redis {
        checks.push(Arc::new(redis.shared.clone()));
    }
    if let Some(model) = &chat.loading {
        checks.push(model.clone());
    }
    let rl = &settings.rate_limit;
    let deprecated = settings.api.deprecated_routes()?;
    let openapi = confab_http::served_openapi_json(&chat.models, &deprecated)
        .map_err(|e| StartupError::Setup(format!("openapi: {e}")))?;
    Ok(HttpState {
        accounts: wired.accounts,
        conversations: chat.conversations.clone(),
        sse: SseSettings {
            keep_alive: settings.generation.keep_alive,
        },
        readiness: Readiness::new(checks),
        metrics,
        body: BodyLimits {
            max_bytes: settings.server.json_limit_bytes,
            max_send_bytes: settings.server.send_limit_bytes,
            read_timeout: settings.server.body_read_timeout,
        },
        cors: CorsPolicy {
            allowed_origins: settings.cors.allowed_origins.clone(),
            max_age_secs: settings.cors.max_age_secs,
        },
        security: SecurityHeaders {
            hsts_max_age_secs: settings.security.hsts_max_age.as_secs(),
            allowed_hosts: AllowedHosts::new(&settings.security.allowed_hosts),
        },
        openapi,
        limiter: wired.limiter,
        rate_tiers: RateTiers {
            anonymous: per_minute("anonymous", rl.anonymous_per_minute),
            user: per_minute("user", rl.user_per_minute),
            admin: per_minute("admin", rl.admin_per_minute),
            api_key: per_minute("api-key", rl.api_key_per_minute),
        },
        trusted_proxies: settings.trusted_proxies()?,
        idempotency: IdempotencyPolicy {
            store: wired.idempotency,
            ttl: settings.idempotency.ttl,
            in_flight_ttl: settings.idempotency.in_flight,
            max_per_owner: settings.idempotency.max_per_user.get(),
        },
        deprecated,
        web: WebPage {
            enabled: settings.web.enabled,
        },
    })
}

/// The public API's server on `listener`, not yet polled.
fn api_server(
    s: &ServerSettings,
    in_flight: Duration,
    state: HttpState,
    listener: TcpListener,
) -> Result<Server, StartupError> {
    Ok(HttpServer::new(move || confab_http::app(state.clone()))
        // Streams are many small writes: without TCP_NODELAY a delta
        // written while the previous one is unacknowledged waits for the
        // client's delayed ACK (40 ms on Linux).
        .on_connect(|conn, _| {
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>()
                && let Err(e) = tcp.set_nodelay(true)
            {
                tracing::debug!(error = %e, "could not set TCP_NODELAY");
            }
        })
        .workers(if s.workers == 0 { cores() } else { s.workers })
        .disable_signals()
        .shutdown_timeout(in_flight.as_secs())
        .client_request_timeout(s.request_head_timeout)
        .client_disconnect_timeout(s.disconnect_timeout)
        .keep_alive(s.keep_alive)
        .max_connections(s.max_connections.get())
        .listen(listener)?
        .run())
}

/// The metrics server on `listener` (never the public address).
fn metrics_server(metrics: Metrics, listener: TcpListener) -> Result<Server, StartupError> {
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(metrics.clone()))
            .configure(confab_http::metrics_routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}
