//! The worker's PostgreSQL connection with TLS (`sslmode=verify-full`).
//!
//! Receipts carry phone numbers, and a managed PostgreSQL usually requires
//! TLS. These tests run against a private PostgreSQL cluster that refuses
//! plaintext (`deploy/pg-tls-server.sh`, started on demand and reused), with
//! a server certificate from a throw-away CA: the worker must connect with
//! that CA as `sslrootcert`, and must refuse a server its CA did not sign.

use dlr_tests::{TestApp, eventually, vonage_form};
use dlr_worker::handlers::postgres::PostgresHandler;
use sqlx::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Where the private TLS-only server listens and the CA files to trust.
struct TlsServer {
    port: String,
    ca: String,
    wrong_ca: String,
}

impl TlsServer {
    /// Starts the server (or finds it running) through the deploy script.
    fn start() -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/pg-tls-server.sh");
        let output = Command::new(&script).output().expect("deploy/pg-tls-server.sh runs");
        assert!(
            output.status.success(),
            "deploy/pg-tls-server.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let settings: HashMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
        let get =
            |key: &str| (*settings.get(key).unwrap_or_else(|| panic!("{key} in {stdout:?}"))).to_owned();
        Self { port: get("PG_TLS_PORT"), ca: get("PG_TLS_CA"), wrong_ca: get("PG_TLS_WRONG_CA") }
    }

    /// A URL for `database` that verifies the server against `ca`.
    fn url(&self, database: &str, ca: &str) -> String {
        format!("postgres://postgres@localhost:{}/{database}?sslmode=verify-full&sslrootcert={ca}", self.port)
    }

    /// A fresh database on this server, for one test.
    async fn create_database(&self) -> String {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            sqlx::PgConnection::connect(&self.url("postgres", &self.ca)).await.expect("admin session");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create database");
        name
    }

    async fn drop_database(&self, name: &str) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.url("postgres", &self.ca)).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut admin)
                .await;
        }
    }
}

#[tokio::test]
async fn verify_full_with_the_servers_ca_connects_over_tls_and_runs_the_migrations() {
    let server = TlsServer::start();
    let database = server.create_database().await;
    let url = server.url(&database, &server.ca);

    let handler = PostgresHandler::connect(&url, &tls_settings(2)).await;
    let mut session = sqlx::PgConnection::connect(&url).await.expect("verify-full session");
    let tls: (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut session)
            .await
            .expect("pg_stat_ssl");
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut session)
        .await
        .unwrap_or(0);
    drop(session);
    server.drop_database(&database).await;

    assert!(handler.is_ok(), "the postgres handler connects with verify-full: {:?}", handler.err());
    assert!(tls.0, "the session is encrypted");
    assert!(tls.1.starts_with("TLSv1."), "TLS version {}", tls.1);
    assert!(migrated >= 1, "the migrations ran over TLS");
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let server = TlsServer::start();
    let error =
        match PostgresHandler::connect(&server.url("postgres", &server.wrong_ca), &tls_settings(1)).await {
            Ok(_) => panic!("verify-full must refuse a certificate the given CA did not sign"),
            Err(error) => error.to_string(),
        };
    assert!(error.to_lowercase().contains("certificate"), "the error names the certificate: {error}");
}

#[tokio::test]
async fn the_test_server_refuses_plaintext_so_a_working_session_is_tls() {
    let server = TlsServer::start();
    let plaintext = format!("postgres://postgres@localhost:{}/postgres?sslmode=disable", server.port);
    let error =
        sqlx::PgConnection::connect(&plaintext).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("no encryption"), "pg_hba.conf must reject plaintext: {error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_reaches_the_status_table_over_tls() {
    let server = TlsServer::start();
    let database = server.create_database().await;
    let url = server.url(&database, &server.ca);
    let app = TestApp::new().await;
    // Bounded: a hang anywhere (broker, database, shutdown) fails the test and still cleans up.
    let outcome = tokio::time::timeout(Duration::from_secs(90), async {
        let ingest = app.spawn_ingest(app.ingest_config()).await;
        let mut config = app.worker_config();
        config.route_delivered = "postgres".to_owned();
        config.database_url = Some(url.clone().into());
        let worker = app.spawn_worker(config).await;
        assert!(ingest.wait_ready(Duration::from_secs(10)).await);
        assert!(worker.wait_ready(Duration::from_secs(10)).await, "the worker started with a TLS database");

        let status = ingest.post_vonage_form(&vonage_form("0D00000000000001", "delivered")).await.status();
        let pool = sqlx::PgPool::connect(&url).await.expect("verify-full pool");
        let stored = eventually(Duration::from_secs(10), async || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM message_status WHERE message_id = '0D00000000000001'",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 1)
        })
        .await;
        pool.close().await;
        worker.stop().await;
        ingest.stop().await;
        (status, stored)
    })
    .await;
    app.cleanup().await;
    server.drop_database(&database).await;
    let (status, stored) = outcome.expect("the end-to-end run finishes within 90 s");
    assert_eq!(status, 200);
    assert!(stored, "the worker wrote the receipt to PostgreSQL over TLS");
}

/// The handler's settings with `connections` in the pool and the defaults'
/// batching (the TLS tests are about the connection, not the batching).
fn tls_settings(connections: u32) -> dlr_worker::handlers::postgres::PostgresSettings {
    dlr_worker::handlers::postgres::PostgresSettings {
        max_connections: connections,
        batch_size: 100,
        linger: std::time::Duration::from_millis(2),
        statement_timeout: std::time::Duration::from_secs(5),
    }
}
