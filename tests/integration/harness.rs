//! Test harness: a private ClickHouse server per test, the collector in-process or as the real
//! binary, and helpers to post events and query rows.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clicktrail::config::{Config, SiteConfig};

pub const ORIGIN: &str = "http://site.test:3000";

/// A port that was free a moment ago: only for servers that bind their own (ClickHouse),
/// whose start is retried on other ports when one was taken in between. The collector itself
/// binds port 0 and reports its address (see [`Binary::start`]).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `clickhouse-server` (Debian's 18.16) on free loopback ports with its own data dir.
pub struct ClickHouse {
    pub http_port: u16,
    tcp_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ClickHouse {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ch = ClickHouse {
            http_port: free_port(),
            tcp_port: free_port(),
            dir,
            child: None,
        };
        // Another process may take a port between our probe and the server's bind: the
        // server then exits at once, and we try other ports.
        for _ in 0..5 {
            ch.write_config();
            if ch.try_resume() {
                return ch;
            }
            ch.http_port = free_port();
            ch.tcp_port = free_port();
        }
        panic!(
            "ClickHouse did not start; see {}/log",
            ch.dir.path().display()
        );
    }

    fn write_config(&self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/clickhouse");
        let d = self.dir.path().display().to_string();
        let xml = std::fs::read_to_string(root.join("config.xml.in"))
            .unwrap()
            .replace("@DIR@", &d)
            .replace("@HTTP_PORT@", &self.http_port.to_string())
            .replace("@TCP_PORT@", &self.tcp_port.to_string());
        for sub in ["log", "data", "tmp", "user_files", "format_schemas"] {
            std::fs::create_dir_all(self.dir.path().join(sub)).unwrap();
        }
        std::fs::write(self.dir.path().join("config.xml"), xml).unwrap();
        std::fs::copy(root.join("users.xml"), self.dir.path().join("users.xml")).unwrap();
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Starts (again) on the same ports and data.
    pub fn resume(&mut self) {
        assert!(
            self.try_resume(),
            "ClickHouse did not start; see {}/log",
            self.dir.path().display()
        );
    }

    /// Starts the server; `false` if it exited or did not answer within 30 s.
    fn try_resume(&mut self) -> bool {
        assert!(self.child.is_none());
        let server =
            std::env::var("CLICKHOUSE_SERVER").unwrap_or("/usr/sbin/clickhouse-server".into());
        let child = Command::new(&server)
            .arg(format!(
                "--config-file={}/config.xml",
                self.dir.path().display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {server} (apt-get install -y clickhouse-server): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http_get(&format!("{}/ping", self.url())) {
                if r.trim() == "Ok." {
                    return true;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }

    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) the server: a ClickHouse that is slow for
    /// real, its connections open and unanswered.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sig = if paused { "-STOP" } else { "-CONT" };
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Stops the server (SIGKILL: an outage, not a maintenance window).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a query over HTTP and returns the text answer; panics on errors.
    pub fn query(&self, sql: &str) -> String {
        self.try_query(sql)
            .unwrap_or_else(|e| panic!("query `{sql}` failed: {e}"))
    }

    pub fn try_query(&self, sql: &str) -> Result<String, String> {
        http_post(&format!("{}/", self.url()), sql.as_bytes())
    }

    pub fn count(&self, sql: &str) -> u64 {
        self.query(sql)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number from `{sql}`"))
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocking HTTP for the harness's sync helpers. It runs on its own thread with its own
/// runtime, so it works from inside async tests and from `Drop`.
fn blocking_http(url: &str, body: Option<Vec<u8>>, timeout: Duration) -> Result<String, String> {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = reqwest::Client::new();
            let req = match body {
                Some(b) => client.post(&url).body(b),
                None => client.get(&url),
            };
            let r = req
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let ok = r.status().is_success();
            let t = r.text().await.map_err(|e| e.to_string())?;
            if ok {
                Ok(t)
            } else {
                Err(t)
            }
        })
    })
    .join()
    .unwrap()
}

pub fn http_get(url: &str) -> Result<String, String> {
    blocking_http(url, None, Duration::from_secs(2))
}

fn http_post(url: &str, body: &[u8]) -> Result<String, String> {
    blocking_http(url, Some(body.to_vec()), Duration::from_secs(30))
}

/// A config for tests: random port, temp data dir, fast batching, one site.
pub fn test_config(ch: &ClickHouse, data_dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_path_buf(),
        sites: vec![SiteConfig {
            key: "test".into(),
            origins: vec![ORIGIN.into()],
            read_tokens: vec![],
            keep_query_params: vec![],
        }],
        ..Config::default()
    };
    c.clickhouse.url = ch.url();
    c.clickhouse.probe_interval = Duration::from_millis(200);
    c.clickhouse.timeout = Duration::from_secs(5);
    c.sink.batch_age = Duration::from_millis(100);
    c.sink.retry_initial = Duration::from_millis(50);
    c.sink.retry_max = Duration::from_millis(500);
    // Tests count rows; the canary's would be in the way. The outage test turns it on.
    c.freshness.canary_interval = Duration::ZERO;
    // Every test client is 127.0.0.1 and some post hundreds of batches at once; the limits
    // have tests of their own (limits.rs).
    c.rate_limit.per_ip_per_second = 0;
    c.rate_limit.per_site_per_second = 0;
    c
}

pub async fn migrate(c: &Config) {
    clicktrail::migrate::run(&c.clickhouse, clicktrail::migrate::InsertWait::Skip)
        .await
        .expect("migrate");
}

/// The collector running in this process.
pub struct App {
    pub base: String,
    /// Where the admin routes and `/metrics` are: `base`, or the `[admin] listen` listener
    /// (read from the admin file).
    pub admin: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), clicktrail::serve::ServeError>>>,
}

impl App {
    pub async fn spawn(config: Config) -> App {
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let admin_file = clicktrail::http::admin::admin_file_path(&config.data_dir);
        let separate_admin = config.admin.listen.is_some();
        if separate_admin {
            let _ = std::fs::remove_file(&admin_file);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(clicktrail::serve::run(config, listener, async {
            let _ = rx.await;
        }));
        let admin = if separate_admin {
            eventually_some("the admin file", Duration::from_secs(10), || {
                let f = admin_file.clone();
                async move {
                    std::fs::read(&f)
                        .ok()
                        .and_then(|b| {
                            serde_json::from_slice::<clicktrail::http::admin::AdminFile>(&b).ok()
                        })
                        .map(|a| a.url)
                }
            })
            .await
        } else {
            base.clone()
        };
        App {
            base,
            admin,
            client: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task
            .take()
            .unwrap()
            .await
            .unwrap()
            .expect("clean shutdown");
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub async fn post(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        post_json(&self.client, &self.base, body).await
    }
}

pub async fn post_json(
    client: &reqwest::Client,
    base: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = client
        .post(format!("{base}/v1/events"))
        .header("content-type", "text/plain")
        .header("origin", ORIGIN)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn pageview(id: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "pageview", "id": id, "ts": now_ms(), "url": "https://shop.test/products/42?ref=x",
        "session": "sess1", "visitor": "vis1", "title": "Product 42", "referrer": "https://search.test/"
    })
}

pub fn batch(events: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"site": "test", "events": events})
}

/// Polls until `f` is true or the deadline passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Awaits `check` until it yields `Some`, or panics naming `what` after `timeout`: the one
/// polling loop of the tests.
pub async fn eventually_some<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The real `clicktrail` binary, for crash tests.
pub struct Binary {
    pub child: Child,
    pub base: String,
}

impl Binary {
    /// Writes `config` as TOML next to the data dir and starts `clicktrail serve` on port 0;
    /// its address comes from the admin file it writes once it listens (no port race).
    pub fn start(config: &Config) -> Binary {
        Binary::start_with(config, &[])
    }

    /// [`Binary::start`] under a wrapper command that execs it (e.g. `prlimit --nofile=64:64`).
    pub fn start_with(config: &Config, wrapper: &[&str]) -> Binary {
        Binary::start_inner(config, wrapper, Stdio::inherit())
    }

    /// [`Binary::start`] with its log (stderr) written to `log`.
    pub fn start_logged(config: &Config, log: &Path) -> Binary {
        Binary::start_inner(config, &[], std::fs::File::create(log).unwrap().into())
    }

    fn start_inner(config: &Config, wrapper: &[&str], stderr: Stdio) -> Binary {
        let mut c = config.clone();
        c.listen = "127.0.0.1:0".parse().unwrap();
        let config_path = Binary::config_path(&c);
        std::fs::create_dir_all(&c.data_dir).unwrap();
        std::fs::write(&config_path, toml_of(&c)).unwrap();
        let admin = clicktrail::http::admin::admin_file_path(&c.data_dir);
        let _ = std::fs::remove_file(&admin);
        let mut argv: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        argv.push(env!("CARGO_BIN_EXE_clicktrail").to_string());
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let base = std::fs::read(&admin)
                .ok()
                .and_then(|b| serde_json::from_slice::<clicktrail::http::admin::AdminFile>(&b).ok())
                .map(|a| a.url);
            if let Some(base) = base {
                if http_get(&format!("{base}/healthz")).is_ok() {
                    return Binary { child, base };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("collector did not start");
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// The path of the config file the binary was started with.
    pub fn config_path(config: &Config) -> std::path::PathBuf {
        config.data_dir.join("clicktrail-test.toml")
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    pub fn metrics(&self) -> String {
        http_get(&format!("{}/metrics", self.base)).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TOML rendering of the config (serde → JSON → TOML keeps the field names).
/// The config as the TOML file an operator would write.
pub fn toml_of(c: &Config) -> String {
    toml::to_string(c).expect("the config serialises to TOML")
}

/// The `clicktrail_sink_held` gauge for `reason`, from the metrics text.
pub fn sink_held(metrics: &str, reason: &str) -> Option<i64> {
    let key = format!("clicktrail_sink_held{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}
