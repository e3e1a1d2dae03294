//! The `confab` binary as an operator runs it: a real process, its exit
//! code and what it prints.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn confab(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONFAB_CONFIG_DIR", dir.join("no-config"))
        .env("CONFAB__LOG__FORMAT", "json")
        .env("CONFAB_LLM_PROVIDER", "none");
    cmd
}

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("run confab");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn openapi_command_prints_the_served_document() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = run(confab(dir.path()).arg("openapi"));
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let served: serde_json::Value =
        serde_json::from_str(&confab_http::openapi_json().unwrap()).unwrap();
    assert_eq!(printed, served);
    let file = dir.path().join("openapi.json");
    let (out, _) = run(confab(dir.path()).args(["openapi", "--output"]).arg(&file));
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&file).unwrap()).unwrap(),
        served
    );
}

#[test]
fn unsafe_config_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "short-SECRET";
    let (out, stderr) = run(confab(dir.path())
        .arg("serve")
        .env("CONFAB_JWT_SECRET", secret));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CONFAB_JWT_SECRET must be at least 32 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(secret),
        "the secret itself is never printed: {stderr}"
    );
}

#[test]
fn production_without_a_secret_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("no-config")).unwrap();
    std::fs::write(dir.path().join("no-config/production.toml"), "").unwrap();
    let (out, stderr) = run(confab(dir.path())
        .arg("serve")
        .env("CONFAB_ENV", "production"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CONFAB_JWT_SECRET is required"), "{stderr}");
}

#[test]
fn mistyped_database_url_is_refused_and_makes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stderr) = run(confab(dir.path())
        .arg("serve")
        .env("DATABASE_URL", "postgress://localhost/confab"));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unsupported database URL scheme 'postgress'"),
        "{stderr}"
    );
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(entries.is_empty(), "no SQLite file appears: {entries:?}");
}

#[test]
fn refused_postgres_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stderr) = run(confab(dir.path())
        .arg("serve")
        .env(
            "DATABASE_URL",
            "postgres://confab:pw-SECRET@127.0.0.1:1/confab",
        )
        .env("CONFAB_LISTEN", "127.0.0.1:0")
        .env("CONFAB_METRICS_LISTEN", "127.0.0.1:0"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to postgres://confab@127.0.0.1:1/confab"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pw-SECRET"),
        "the password never appears: {stderr}"
    );
    assert!(!dir.path().join("data").exists());
}

#[test]
fn migrate_command_creates_and_migrates_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stderr) = run(confab(dir.path()).arg("migrate"));
    assert!(out.status.success(), "{stderr}");
    assert!(dir.path().join("data/confab.db").exists());
    assert!(
        !stderr.contains(r#""applied":0"#),
        "the first run applies migrations: {stderr}"
    );
    let (out, stderr) = run(confab(dir.path()).arg("migrate"));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#""applied":0"#),
        "a second run applies nothing: {stderr}"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = confab(dir.path())
        .arg("serve")
        .env("CONFAB_LISTEN", "127.0.0.1:0")
        .env("CONFAB_METRICS_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("confab is serving"));
    assert!(serving, "the server never said it was serving");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "confab did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM received")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("draining")), "{rest:?}");
}

#[test]
fn committed_openapi_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let committed = std::fs::read_to_string(&path).expect("docs/openapi.json (run `make openapi`)");
    let current = confab_http::openapi_json().unwrap();
    assert_eq!(
        committed.trim_end(),
        current.trim_end(),
        "docs/openapi.json is stale: run `make openapi` and commit it"
    );
}

#[test]
fn development_generates_a_private_secret_once_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let run_once = || {
        let (out, stderr) = run(confab(dir.path()).arg("migrate"));
        assert!(out.status.success(), "{stderr}");
    };
    // `migrate` needs no secret: nothing is generated.
    run_once();
    assert!(!dir.path().join("data/jwt-secret").exists());
    let admin = |name: &str| {
        let out = confab(dir.path())
            .args([
                "create-admin",
                "--username",
                name,
                "--email",
                &format!("{name}@example.com"),
            ])
            .env("CONFAB_ADMIN_PASSWORD", "correct horse battery staple")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = admin("first_admin");
    let path = dir.path().join("data/jwt-secret");
    let secret = std::fs::read_to_string(&path).unwrap();
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(first.contains("generated a development secret"), "{first}");
    assert!(!first.contains(&secret), "the secret is never logged");
    let second = admin("second_admin");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        secret,
        "kept, not regenerated"
    );
    assert!(second.contains("using the development secret"), "{second}");
}

#[test]
fn create_admin_reads_the_password_from_stdin_never_an_argument() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = confab(dir.path())
        .args([
            "create-admin",
            "--username",
            "root_admin",
            "--email",
            "root@example.com",
        ])
        .env("CONFAB_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Stdin-Password-Xylophone\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("admin created"), "{stderr}");
    assert!(!stderr.contains("Stdin-Password-Xylophone"), "{stderr}");
    // There is no password flag to leak it through `ps`.
    let (out, stderr) = run(confab(dir.path()).args([
        "create-admin",
        "--username",
        "x_admin",
        "--email",
        "x@example.com",
        "--password",
        "p",
    ]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("unexpected argument '--password'"),
        "{stderr}"
    );
    // A weak password is refused with the reason, in one line.
    let (out, stderr) = run(confab(dir.path())
        .args([
            "create-admin",
            "--username",
            "weak_admin",
            "--email",
            "w@example.com",
        ])
        .env("CONFAB_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .env("CONFAB_ADMIN_PASSWORD", "password123"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("too common"), "{stderr}");
}

#[test]
fn missing_model_file_is_a_clear_error_that_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let (out, stderr) = run(confab(dir.path())
        .arg("serve")
        .env("CONFAB_LLM_PROVIDER", "local")
        .env("CONFAB__LLM__LOCAL__MODEL_PATH", "models/absent.gguf")
        .env("CONFAB_LISTEN", "127.0.0.1:0")
        .env("CONFAB_METRICS_LISTEN", "127.0.0.1:0"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("models/absent.gguf"), "{stderr}");
    assert!(stderr.contains("make model"), "{stderr}");
}

fn model_file() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "the built-in model is missing: run `make model`"
    );
    path
}

/// Starts `serve` on the built-in model and returns the child and its
/// stderr lines.
fn serve_local(
    dir: &std::path::Path,
    model: &std::path::Path,
    extra: &[(&str, &str)],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut cmd = confab(dir);
    cmd.arg("serve")
        .env("CONFAB_LLM_PROVIDER", "local")
        .env("CONFAB__LLM__LOCAL__MODEL_PATH", model)
        .env("CONFAB_LISTEN", "127.0.0.1:0")
        .env("CONFAB_METRICS_LISTEN", "127.0.0.1:0")
        .stderr(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

#[test]
fn configured_model_threads_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut lines) = serve_local(
        dir.path(),
        &model_file(),
        &[("CONFAB__LLM__LOCAL__THREADS", "1")],
    );
    let loaded = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("the local model is loaded"))
        .expect("the model loaded");
    let entry: serde_json::Value = serde_json::from_str(&loaded).unwrap();
    assert_eq!(entry["threads"], 1, "{loaded}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_model_whose_weights_fail_to_load_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // The header is whole, the tensors are cut short: start-up gets past
    // the checks, the background load fails.
    let bytes = std::fs::read(model_file()).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (mut child, lines) = serve_local(dir.path(), &cut, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "confab kept running on a broken model"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(1));
    let stderr: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("the built-in model could not be loaded")),
        "{stderr:?}"
    );
}
