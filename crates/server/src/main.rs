//! `confab`: the Confab server binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confab_domain::Password;
use confab_server::{Settings, create_admin, migrate, serve, telemetry};

mod chat;

/// jemalloc, configured (`.cargo/config.toml`) to hand freed pages back to
/// the system within a second and from a background thread, so that the
/// resident set follows the live heap under a steady load instead of
/// keeping what a peak freed (docs/benchmarks.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Confab: a REST + Server-Sent-Events backend for a chat assistant.
#[derive(Parser)]
#[command(name = "confab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (and /metrics on its own address) until SIGTERM/SIGINT.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Create an account with role `admin`. The password is read from
    /// CONFAB_ADMIN_PASSWORD or, when that is unset, from the first line of
    /// standard input; never from an argument (it would show in `ps`).
    CreateAdmin {
        /// Login name of the new admin.
        #[arg(long)]
        username: String,
        /// E-mail address of the new admin.
        #[arg(long)]
        email: String,
    },
    /// Print the OpenAPI 3.1 document (the one served at /api/v1/openapi.json).
    Openapi {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Chat with a Confab server from the terminal (a client: it needs no
    /// configuration of its own).
    Chat(chat::ChatArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi { output } = &cli.command {
        return print_openapi(output.as_ref());
    }
    if let Command::Chat(args) = &cli.command {
        return chat::run(args.clone());
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("confab: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Serve)
        && settings.llm.provider == confab_server::LlmProvider::Local
        && let Some(error) = confab_server::with_model_threads(settings.llm.local.threads)
    {
        eprintln!("confab: cannot restart with the configured model threads: {error}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = telemetry::init(&settings.log) {
        eprintln!("confab: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await.map(|_| ()),
            Command::CreateAdmin { username, email } => {
                let password = admin_password()?;
                let user = create_admin(settings, username, email, password).await?;
                tracing::info!(user_id = %user.id, username = %user.username, "admin created");
                Ok(())
            }
            Command::Openapi { .. } | Command::Chat(_) => Ok(()),
        }
    });
    // Tasks log as the runtime stops them: their lines are written too.
    drop(runtime);
    match result {
        Ok(()) => {
            telemetry::flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "confab stopped with an error");
            telemetry::flush();
            eprintln!("confab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_openapi(output: Option<&PathBuf>) -> ExitCode {
    let doc = match confab_http::openapi_json() {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("confab: cannot render the OpenAPI document: {e}");
            return ExitCode::FAILURE;
        }
    };
    let written = match output {
        Some(path) => std::fs::write(path, doc.as_bytes()),
        None => std::io::stdout()
            .write_all(doc.as_bytes())
            .and_then(|()| std::io::stdout().write_all(b"\n")),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab: cannot write the OpenAPI document: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The new admin's password: the environment, else one line of stdin.
fn admin_password() -> Result<Password, confab_server::StartupError> {
    let raw = match std::env::var("CONFAB_ADMIN_PASSWORD") {
        Ok(value) => value,
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| {
                confab_server::StartupError::Setup(format!(
                    "cannot read the password from stdin: {e}"
                ))
            })?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    Password::presented(&raw)
        .map_err(|e| confab_server::StartupError::Setup(format!("password: {e}")))
}
