//! Dashboards and alerts must only use metrics the binaries really export.
//!
//! A renamed metric silently blanks a Grafana panel and disarms an alert;
//! this test scrapes both running binaries and checks every `dlr_*` name
//! that `deploy/` refers to.

use dlr_tests::{SEED_FORM, TestApp, eventually, metric_value};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// `dlr_*` names referenced by the files under `dir` with one of `extensions`.
fn referenced_names(dir: &Path, extensions: &[&str], names: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            referenced_names(&path, extensions, names);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e)) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let bytes = text.as_bytes();
            let mut i = 0;
            while let Some(found) = text[i..].find("dlr_") {
                let start = i + found;
                let boundary =
                    start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
                let end = start
                    + text[start..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(text.len() - start);
                let name = &text[start..end];
                if boundary && (name.starts_with("dlr_ingest_") || name.starts_with("dlr_worker_")) {
                    names.insert(name.to_owned());
                }
                i = end;
            }
        }
    }
}

/// Metric names present in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_dashboards_and_alerts_is_exported() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut referenced = BTreeSet::new();
    referenced_names(&deploy, &["json", "yaml", "yml"], &mut referenced);
    assert!(referenced.len() >= 10, "found only {referenced:?} under {}", deploy.display());

    let app = TestApp::new().await;
    let ingest = app.spawn_ingest(app.ingest_config()).await;
    // Webhook metrics have series per configured endpoint only: give the
    // worker one, for pending receipts (the seed is delivered, so unused).
    let mut config = app.worker_config();
    config.route_pending = "log,http".to_owned();
    config.http_url_pending = Some("http://127.0.0.1:9/hook".parse().expect("a URL"));
    config.http_secret = Some("whsec_c2VlZA==".to_owned().into());
    let worker = app.spawn_worker(config).await;
    assert!(ingest.wait_ready(Duration::from_secs(10)).await);
    assert!(worker.wait_ready(Duration::from_secs(10)).await);
    assert_eq!(ingest.post_vonage_form(SEED_FORM).await.status(), 200);

    // Wait until the worker has handled the receipt so its histograms have samples.
    let mut worker_text = String::new();
    eventually(Duration::from_secs(10), async || {
        worker_text = worker.metrics().await;
        metric_value(&worker_text, "dlr_worker_end_to_end_latency_seconds_count", &[]) >= 1.0
    })
    .await;
    let mut exported = exported_names(&ingest.metrics().await);
    exported.extend(exported_names(&worker_text));

    let missing: Vec<&String> = referenced.iter().filter(|name| !exported.contains(*name)).collect();
    assert!(missing.is_empty(), "referenced by deploy/ but not exported: {missing:?}");

    worker.stop().await;
    ingest.stop().await;
    app.cleanup().await;
}

/// Every `env` name clap knows for `command`, subcommands included.
fn env_names(command: &clap::Command, names: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            names.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        env_names(sub, names);
    }
}

/// Keys of a `KEY=value` env file (kustomize `envs:`), comments skipped.
fn env_file_keys(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').map_or(l, |(k, _)| k).to_owned())
        .collect()
}

#[test]
fn every_setting_in_the_manifests_configmaps_is_read_by_its_binary() {
    use clap::CommandFactory;
    // Read by the runtime or the environment, not by clap.
    const OUTSIDE_CLAP: &[&str] = &["TOKIO_WORKER_THREADS"];
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base");
    for (file, command) in
        [("ingest.env", dlr_ingest::Config::command()), ("worker.env", dlr_worker::config::Cli::command())]
    {
        let mut known = BTreeSet::new();
        env_names(&command, &mut known);
        let keys = env_file_keys(&k8s.join(file));
        assert!(keys.len() >= 5, "{file}: found only {keys:?}");
        let unknown: Vec<&String> =
            keys.iter().filter(|k| !known.contains(*k) && !OUTSIDE_CLAP.contains(&k.as_str())).collect();
        assert!(unknown.is_empty(), "{file} sets variables its binary ignores: {unknown:?}");
    }
}
