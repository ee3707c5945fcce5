//! The service under test as child processes: two ingests, two workers
//! and nginx, each logging into the work directory.

use super::*;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// A child process, stopped when dropped.
pub struct Proc {
    child: Child,
    /// nginx gets SIGTERM first so its worker process goes too; the
    /// service binaries are simply killed.
    graceful: bool,
}

impl Proc {
    fn spawn(
        program: &Path,
        args: &[&str],
        envs: &[(String, String)],
        log: &Path,
        graceful: bool,
    ) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self { child, graceful })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if self.graceful && signal(self.pid(), "TERM").is_ok() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.exited().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1): the workspace forbids `unsafe`, so no libc.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status =
        Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Worker,
}

/// One instance: a fixed port (nginx knows it) and maybe a running process.
struct Service {
    name: String,
    role: Role,
    port: u16,
    proc: Option<Proc>,
}

/// What the cluster is built from.
pub struct Settings {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub nginx: PathBuf,
    pub run_id: String,
    pub topology: Topology,
    pub database_url: String,
    pub receiver_url: String,
    pub ingest_max_concurrency: usize,
    /// The ingests' `INGEST_READINESS_BROKER_GRACE_SECONDS`.
    pub readiness_grace: Duration,
}

pub struct Cluster {
    settings: Settings,
    pub topology: Topology,
    pub events_exchange: String,
    services: Vec<Service>,
    nginx: Option<Proc>,
    lb_port: u16,
    probe: reqwest::Client,
}

use dlr_tests::free_port;

impl Cluster {
    pub fn new(settings: Settings) -> Result<Self> {
        let mut services = Vec::new();
        for (role, prefix) in [(Role::Ingest, "ingest"), (Role::Worker, "worker")] {
            for n in 1..=2 {
                services.push(Service {
                    name: format!("{prefix}-{n}"),
                    role,
                    port: free_port()?,
                    proc: None,
                });
            }
        }
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the probe client")?;
        Ok(Self {
            topology: settings.topology.clone(),
            events_exchange: format!("{}.events", settings.topology.exchange),
            services,
            nginx: None,
            lb_port: free_port()?,
            probe,
            settings,
        })
    }

    /// The load balancer's base URL: what the provider calls.
    pub fn lb_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.lb_port)
    }

    fn index(&self, role: Role, n: usize) -> Result<usize> {
        self.services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role == role)
            .nth(n)
            .map(|(i, _)| i)
            .ok_or_else(|| anyhow!("no {role:?} number {n}"))
    }

    pub fn name(&self, role: Role, n: usize) -> String {
        self.index(role, n).map(|i| self.services[i].name.clone()).unwrap_or_default()
    }

    fn env(&self, service: &Service) -> Vec<(String, String)> {
        let s = &self.settings;
        let t = &self.topology;
        let mut env: Vec<(&str, String)> = vec![
            ("AMQP_URL", dlr_tests::amqp_urls()),
            ("AMQP_EXCHANGE", t.exchange.clone()),
            ("AMQP_QUEUE", t.queue.clone()),
            ("AMQP_PARKED_QUEUE", t.parked_queue.clone()),
            ("AMQP_QUARANTINE_QUEUE", t.quarantine_queue.clone()),
            ("AMQP_QUARANTINE_MAX_LENGTH", t.quarantine_max_length.to_string()),
            ("AMQP_QUARANTINE_MAX_BYTES", t.quarantine_max_bytes.to_string()),
            ("AMQP_DELIVERY_LIMIT", t.delivery_limit.to_string()),
            ("AMQP_RECEIPT_SHARDS", t.receipt_shards.to_string()),
            ("LOG_FORMAT", "text".to_owned()),
            // Warnings, plus start-up and the receipt of a shutdown signal.
            (
                "RUST_LOG",
                "warn,ingest=info,worker=info,dlr_shared::shutdown=info,dlr_ingest::startup=info,dlr_worker::startup=info"
                    .to_owned(),
            ),
            // Connection names are `<binary>@<HOSTNAME>`: this marks the
            // broker connections as the run's own (see Rabbit::wait_exclusive).
            ("HOSTNAME", format!("harness-{}-{}", s.run_id, service.name)),
        ];
        match service.role {
            Role::Ingest => {
                env.push(("INGEST_ADDR", format!("127.0.0.1:{}", service.port)));
                // The load is unsigned: serve both providers it uses without verification.
                env.push(("VONAGE_SIGNATURE_MODE", "off".to_owned()));
                env.push(("TWILIO_SIGNATURE_MODE", "off".to_owned()));
                env.push(("INGEST_MAX_CONCURRENCY", s.ingest_max_concurrency.to_string()));
                env.push(("INGEST_CONFIRM_TIMEOUT_MS", INGEST_CONFIRM_TIMEOUT_MS.to_string()));
                env.push(("INGEST_READINESS_BROKER_GRACE_SECONDS", s.readiness_grace.as_secs().to_string()));
            }
            Role::Worker => {
                env.push(("WORKER_ADDR", format!("127.0.0.1:{}", service.port)));
                env.push(("WORKER_EVENTS_EXCHANGE", self.events_exchange.clone()));
                for variable in ["WORKER_ROUTE_DELIVERED", "WORKER_ROUTE_FAILED", "WORKER_ROUTE_PENDING"] {
                    env.push((variable, "postgres,http".to_owned()));
                }
                env.push(("DATABASE_URL", s.database_url.clone()));
                env.push(("DATABASE_MAX_CONNECTIONS", "8".to_owned()));
                env.push(("WORKER_HTTP_URL", s.receiver_url.clone()));
                env.push(("WORKER_HTTP_SECRET", WEBHOOK_SECRET.to_owned()));
                env.push(("WORKER_HTTP_TIMEOUT_MS", "5000".to_owned()));
                // No circuit breaker: the harness's retry schedule lasts seconds,
                // less than any cool-down, so an open circuit would park events
                // that a day-long production schedule would deliver. The breaker
                // has its own tests (tests/webhooks.rs).
                env.push(("WORKER_WEBHOOK_BREAKER_FAILURES", "0".to_owned()));
                env.push(("WORKER_RETRY_INITIAL_DELAY_MS", WORKER_RETRY_INITIAL_DELAY_MS.to_string()));
                env.push(("WORKER_RETRY_MAX_DELAY_MS", WORKER_RETRY_MAX_DELAY_MS.to_string()));
                env.push(("WORKER_MAX_ATTEMPTS", WORKER_MAX_ATTEMPTS.to_string()));
                env.push(("WORKER_PREFETCH", "50".to_owned()));
                env.push(("WORKER_DRAIN_TIMEOUT_SECONDS", "10".to_owned()));
            }
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Starts (or starts again) one instance on its fixed port.
    pub fn start(&mut self, role: Role, n: usize) -> Result<()> {
        let i = self.index(role, n)?;
        let binary = match role {
            Role::Ingest => "ingest",
            Role::Worker => "worker",
        };
        let program = self.settings.bin_dir.join(binary);
        let env = self.env(&self.services[i]);
        let log = self.settings.dir.join(format!("{}.log", self.services[i].name));
        let proc = Proc::spawn(&program, &[], &env, &log, false)
            .with_context(|| format!("{} (build with cargo build --release)", program.display()))?;
        self.services[i].proc = Some(proc);
        Ok(())
    }

    /// Waits until the instance's `/readyz` answers 200.
    pub async fn wait_ready(&self, role: Role, n: usize, within: Duration) -> Result<()> {
        let service = &self.services[self.index(role, n)?];
        let url = format!("http://127.0.0.1:{}/readyz", service.port);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(response) = self.probe.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} not ready within {within:?} (log: {})",
            service.name,
            self.log_path(&service.name).display()
        )
    }

    /// Waits until every instance is ready (after a broker restart).
    pub async fn wait_all_ready(&self, within: Duration) -> Result<()> {
        for role in [Role::Ingest, Role::Worker] {
            for n in 0..2 {
                self.wait_ready(role, n, within).await?;
            }
        }
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.settings.dir.join(format!("{name}.log"))
    }

    /// SIGKILL: no drain, unacked deliveries go back to the queue.
    pub fn kill(&mut self, role: Role, n: usize) -> Result<()> {
        let i = self.index(role, n)?;
        let mut proc = self.services[i].proc.take().ok_or_else(|| anyhow!("{role:?} {n} is not running"))?;
        proc.child.kill().context("kill -9")?;
        proc.child.wait().context("reaping the killed process")?;
        Ok(())
    }

    /// SIGTERM and wait for the process to exit by itself (its drain).
    pub async fn terminate(&mut self, role: Role, n: usize, within: Duration) -> Result<ExitStatus> {
        let i = self.index(role, n)?;
        let name = self.services[i].name.clone();
        let mut proc = self.services[i].proc.take().ok_or_else(|| anyhow!("{name} is not running"))?;
        signal(proc.pid(), "TERM")?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = proc.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{name} did not exit within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts every instance with `AMQP_RECEIPT_SHARDS` = `shards`, in
    /// the order of a re-sharding rollout without traffic: the ingests
    /// (they declare the new queues), then the workers. SIGTERM, so that
    /// each drains what it holds first.
    pub async fn reshard(&mut self, shards: u16) -> Result<()> {
        self.topology.receipt_shards = shards;
        let (drain, ready) = (Duration::from_secs(60), Duration::from_secs(120));
        for role in [Role::Ingest, Role::Worker] {
            for n in 0..2 {
                let status = self.terminate(role, n, drain).await?;
                if !status.success() {
                    bail!("{} exited with {status} after SIGTERM", self.name(role, n));
                }
                self.start(role, n)?;
                self.wait_ready(role, n, ready).await?;
            }
        }
        Ok(())
    }

    /// Fails if an instance exited that nobody stopped (a crash).
    pub fn check_alive(&mut self) -> Result<()> {
        for service in &mut self.services {
            if let Some(proc) = service.proc.as_mut()
                && let Some(status) = proc.exited()
            {
                bail!(
                    "{} exited unexpectedly ({status}); see {}",
                    service.name,
                    self.settings.dir.join(format!("{}.log", service.name)).display()
                );
            }
        }
        if let Some(nginx) = self.nginx.as_mut()
            && let Some(status) = nginx.exited()
        {
            bail!("nginx exited unexpectedly ({status})");
        }
        Ok(())
    }

    /// Ingests first (they declare the topology), then the workers one
    /// after the other (migrations), then nginx in front.
    pub async fn start_all(&mut self) -> Result<()> {
        let within = Duration::from_secs(60);
        for n in 0..2 {
            self.start(Role::Ingest, n)?;
        }
        for n in 0..2 {
            self.wait_ready(Role::Ingest, n, within).await?;
        }
        for n in 0..2 {
            self.start(Role::Worker, n)?;
            self.wait_ready(Role::Worker, n, within).await?;
        }
        self.start_nginx()?;
        let url = format!("{}/healthz", self.lb_url());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = self.probe.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!("nginx does not answer on {url}; see {}", self.log_path("nginx").display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Round robin over the two ingests. Only requests that never reached
    /// an ingest (connection refused, connect timeout) are passed to the
    /// other one: nginx never retries a POST that was sent, and a 503 goes
    /// back to the provider as it is. A refused server rests 2 s.
    fn start_nginx(&mut self) -> Result<()> {
        let dir = self.settings.dir.display().to_string();
        let ports: Vec<u16> =
            self.services.iter().filter(|s| s.role == Role::Ingest).map(|s| s.port).collect();
        let servers: String = ports
            .iter()
            .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let config = format!(
            "worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.log warn;
events {{ worker_connections 4096; }}
http {{
access_log off;
client_body_temp_path {dir}/nginx-body;
proxy_temp_path {dir}/nginx-proxy;
fastcgi_temp_path {dir}/nginx-fastcgi;
uwsgi_temp_path {dir}/nginx-uwsgi;
scgi_temp_path {dir}/nginx-scgi;
upstream ingest {{
{servers}        keepalive 64;
}}
server {{
    listen 127.0.0.1:{lb};
    location / {{
        proxy_pass http://ingest;
        proxy_http_version 1.1;
        proxy_set_header Connection \"\";
        proxy_next_upstream error timeout http_502;
        proxy_next_upstream_tries 2;
        proxy_connect_timeout 2s;
        proxy_send_timeout 15s;
        proxy_read_timeout 15s;
    }}
}}
}}
",
            lb = self.lb_port,
        );
        let path = self.settings.dir.join("nginx.conf");
        std::fs::write(&path, config).context("writing nginx.conf")?;
        let conf = path.display().to_string();
        let error_log = format!("{dir}/nginx.log");
        let args = ["-p", dir.as_str(), "-e", error_log.as_str(), "-c", conf.as_str(), "-g", "daemon off;"];
        let log = self.log_path("nginx");
        self.nginx = Some(
            Proc::spawn(&self.settings.nginx, &args, &[], &log, true)
                .context("nginx (apt-get install nginx, or pass --nginx)")?,
        );
        Ok(())
    }

    /// Stops everything: nginx first, so nothing new comes in.
    pub fn shutdown(&mut self) {
        self.nginx = None;
        for service in &mut self.services {
            service.proc = None;
        }
    }
}
