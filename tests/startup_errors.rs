//! Misconfiguration fails fast and says what to fix: the real binaries are
//! run with one bad setting each and must exit non-zero within seconds,
//! with one line naming the binary and the environment variable.

use dlr_tests::binaries::{Run, run};
use std::time::Duration;

/// Start-up errors are detected before anything slow happens.
const FAST: Duration = Duration::from_secs(5);

/// A port where nothing listens, so the broker is never reached by accident.
const NO_BROKER: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

fn assert_refused(run: &Run, binary: &str, variable: &str) {
    let text = run.text();
    assert!(!run.output.status.success(), "{binary} started despite a bad {variable}: {text}");
    assert!(run.elapsed < FAST, "{binary} took {:?} to refuse {variable}: {text}", run.elapsed);
    let line = format!("{binary}: ");
    assert!(
        text.lines().any(|l| l.starts_with(&line) && l.contains(variable)),
        "no line starting with {line:?} names {variable}: {text}"
    );
    assert!(!text.contains("panicked"), "a panic was printed: {text}");
}

#[test]
fn ingest_names_the_variable_of_every_bad_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("INGEST_ADDR", "nonsense")], "INGEST_ADDR"),
        (&[("INGEST_DRAIN_TIMEOUT_SECONDS", "0")], "INGEST_DRAIN_TIMEOUT_SECONDS"),
        (&[("INGEST_REQUEST_TIMEOUT_MS", "0")], "INGEST_REQUEST_TIMEOUT_MS"),
        (&[("INGEST_CONFIRM_TIMEOUT_MS", "abc")], "INGEST_CONFIRM_TIMEOUT_MS"),
        // The request deadline covers the confirm wait: it must be longer.
        (
            &[("INGEST_REQUEST_TIMEOUT_MS", "3000"), ("INGEST_CONFIRM_TIMEOUT_MS", "5000")],
            "INGEST_REQUEST_TIMEOUT_MS",
        ),
        (&[("LOG_FORMAT", "yaml")], "LOG_FORMAT"),
        (&[("TWILIO_SIGNATURE_MODE", "enforce")], "TWILIO_AUTH_TOKEN"),
    ];
    for (env, variable) in cases {
        let mut env = env.to_vec();
        env.push(("AMQP_URL", NO_BROKER));
        if !env.iter().any(|(k, _)| *k == "INGEST_ADDR") {
            env.push(("INGEST_ADDR", "127.0.0.1:0"));
        }
        assert_refused(&run("ingest", &[], &env), "ingest", variable);
    }
}

#[test]
fn log_format_is_case_insensitive() {
    // The upper-case format is accepted: the error is the next setting's.
    let env = [("LOG_FORMAT", "JSON"), ("INGEST_REQUEST_TIMEOUT_MS", "100"), ("AMQP_URL", NO_BROKER)];
    let refused = run("ingest", &[], &env);
    assert_refused(&refused, "ingest", "INGEST_REQUEST_TIMEOUT_MS");
    assert!(!refused.text().contains("LOG_FORMAT"), "{}", refused.text());
}

#[test]
fn worker_names_the_variable_of_every_bad_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("WORKER_ROUTE_DELIVERED", "foo")], "WORKER_ROUTE_DELIVERED"),
        (&[("WORKER_ROUTE_DELIVERED", "postgres")], "DATABASE_URL"),
        (&[("WORKER_DRAIN_TIMEOUT_SECONDS", "0")], "WORKER_DRAIN_TIMEOUT_SECONDS"),
        (&[("WORKER_HTTP_TIMEOUT_MS", "0")], "WORKER_HTTP_TIMEOUT_MS"),
        (&[("WORKER_PREFETCH", "-1")], "WORKER_PREFETCH"),
        (&[("WORKER_ADDR", "nonsense")], "WORKER_ADDR"),
    ];
    for (env, variable) in cases {
        let mut env = env.to_vec();
        env.push(("AMQP_URL", NO_BROKER));
        if !env.iter().any(|(k, _)| *k == "WORKER_ADDR") {
            env.push(("WORKER_ADDR", "127.0.0.1:0"));
        }
        assert_refused(&run("worker", &[], &env), "worker", variable);
    }
}

#[test]
fn a_bad_database_url_reports_its_cause_without_a_lapin_panic() {
    // Against the real broker: on the old code the broker connection was
    // already up when the database failed, and the runtime ending under
    // lapin's I/O thread printed a panic in some runs.
    for _ in 0..4 {
        let env = [
            ("WORKER_ROUTE_DELIVERED", "postgres"),
            ("DATABASE_URL", "localhost/test"),
            ("WORKER_ADDR", "127.0.0.1:0"),
        ];
        assert_refused(&run("worker", &[], &env), "worker", "DATABASE_URL");
    }
    let env = [
        ("WORKER_ROUTE_DELIVERED", "postgres"),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/test"),
        ("WORKER_ADDR", "127.0.0.1:0"),
        ("AMQP_URL", NO_BROKER),
    ];
    let refused = run("worker", &[], &env);
    assert_refused(&refused, "worker", "DATABASE_URL");
    assert!(refused.text().contains("refused"), "the cause is missing: {}", refused.text());
}

#[test]
fn unknown_replay_filter_values_are_errors_listing_the_allowed_ones() {
    let refused = run("worker", &["replay-parked", "--filter", "reason=bogus"], &[("AMQP_URL", NO_BROKER)]);
    assert_refused(&refused, "worker", "bogus");
    assert!(
        refused.text().contains("permanent_failure, retries_exhausted, unparseable"),
        "{}",
        refused.text()
    );
}

#[test]
fn shared_flags_are_accepted_after_the_subcommand() {
    // The flag is accepted; what is missing is the subcommand's own setting.
    let refused = run("worker", &["replay-quarantine", "--amqp-url", NO_BROKER], &[]);
    assert_refused(&refused, "worker", "WORKER_INGEST_URL");
    assert!(!refused.text().contains("unexpected argument"), "{}", refused.text());
}

#[test]
fn help_never_shows_a_secret() {
    let secrets = [
        ("AMQP_URL", "amqp://user:amqp-pw-1@broker:5672/%2f"),
        ("DATABASE_URL", "postgres://dlr:db-pw-2@db/dlr"),
        ("WORKER_HTTP_SECRET", "whsec_c2VjcmV0LTM="),
        ("WORKER_HTTP_URL", "https://user:http-pw-4@hooks.example.com/?token=tok-5"),
        ("WORKER_INGEST_URL", "http://user:ingest-pw-6@ingest:8080"),
        ("VONAGE_SIGNATURE_SECRET", "vonage-secret-7"),
        ("TWILIO_AUTH_TOKEN", "twilio-token-8"),
    ];
    for (binary, args) in [
        ("ingest", &["--help"][..]),
        ("worker", &["--help"][..]),
        ("worker", &["replay-quarantine", "--help"][..]),
    ] {
        let shown = run(binary, args, &secrets);
        let text = shown.text();
        assert!(shown.output.status.success(), "{binary} {args:?}: {text}");
        assert!(text.contains("AMQP_URL"), "{binary} {args:?} does not document AMQP_URL: {text}");
        for marker in [
            "amqp-pw-1",
            "db-pw-2",
            "c2VjcmV0LTM",
            "http-pw-4",
            "tok-5",
            "ingest-pw-6",
            "vonage-secret-7",
            "twilio-token-8",
        ] {
            assert!(!text.contains(marker), "{binary} {args:?} shows {marker}: {text}");
        }
    }
}

#[tokio::test]
async fn run_sh_exits_with_the_failing_binarys_status_and_prefixes_its_lines() {
    let app = dlr_tests::TestApp::new().await;
    let bin_dir =
        dlr_tests::binaries::binary("worker").parent().map(|d| d.display().to_string()).unwrap_or_default();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/run.sh");
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("bash")
            .arg(script)
            .env("DLR_BIN_DIR", &bin_dir)
            .envs(app.topology_env())
            .env("WORKER_EVENTS_EXCHANGE", &app.events_exchange)
            .env("INGEST_ADDR", "127.0.0.1:0")
            .env("WORKER_ADDR", "127.0.0.1:0")
            .env("WORKER_ROUTE_DELIVERED", "foo")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    app.cleanup().await;

    let output = output.expect("run.sh returned within 60 s").expect("bash runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("worker | worker: ") && l.contains("WORKER_ROUTE_DELIVERED")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("ingest | ")), "{text}");
    assert!(!text.contains("Ctrl-C to stop"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(30), "{text}");
}

/// A broker that answers but refuses the configuration (wrong password,
/// missing vhost) is no outage to wait out: both binaries exit non-zero at
/// once, naming the `AMQP_URL` entry and the cause, never the password.
/// With several entries, one that is merely unreachable does not hide the
/// refusal of another. (Before, both retried for ever, unready.)
#[test]
fn a_broker_that_refuses_the_configuration_stops_start_up() {
    let broker = dlr_tests::proxy::broker_addr();
    let wrong_password = format!("amqp://guest:not-the-password-xyz@{broker}/%2f");
    let missing_vhost = format!("amqp://guest:guest@{broker}/no-such-vhost");
    let cases = [
        (wrong_password.clone(), "AMQP_URL entry 1", "access refused"),
        (missing_vhost, "AMQP_URL entry 1", "vhost"),
        (format!("{NO_BROKER},{wrong_password}"), "AMQP_URL entry 2", "access refused"),
    ];
    for (binary, addr) in [("ingest", "INGEST_ADDR"), ("worker", "WORKER_ADDR")] {
        for (url, entry, cause) in &cases {
            let (status, text) = run_bounded(binary, &[("AMQP_URL", url), (addr, "127.0.0.1:0")], FAST * 2);
            assert!(
                status.is_some_and(|s| !s.success()),
                "{binary} kept running or succeeded with {url}: {text}"
            );
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{binary}: ")) && l.contains(entry) && l.contains(cause)),
                "{binary}: no line names {entry} and {cause:?}: {text}"
            );
            assert!(!text.contains("not-the-password-xyz"), "{binary} printed the password: {text}");
            assert!(!text.contains("panicked"), "a panic was printed: {text}");
        }
    }
}

/// Runs `binary` with exactly `env` (plus PATH) for at most `within`; its
/// exit status (`None`: still running, then killed) and everything it printed.
fn run_bounded(
    binary: &str,
    env: &[(&str, &str)],
    within: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    use std::io::Read;
    let mut child = std::process::Command::new(dlr_tests::binaries::binary(binary))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break Some(status),
            None if started.elapsed() > within => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    (status, text)
}
