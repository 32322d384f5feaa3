//! The real `vigil` binary in a child process, its stderr collected line by line.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Ports for vigil's listeners come from 20000–31999, below the kernel's ephemeral
/// range (32768+), so a fake backend binding `:0` can never take one between the
/// moment we pick it and the moment vigil binds it; and no port is handed out twice
/// in one test process, so parallel tests never share one.
const PORT_BASE: u32 = 20_000;
const PORT_SPAN: u32 = 12_000;
static NEXT_PORT: AtomicUsize = AtomicUsize::new(0);

/// A loopback address with a port that is free and was never handed out before here.
pub fn free_port() -> SocketAddr {
    // Test binaries run one after another; start each at a different place anyway.
    let start = std::process::id() % PORT_SPAN;
    loop {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst) as u32;
        assert!(n < PORT_SPAN, "ran out of test ports");
        let port = (PORT_BASE + (start + n) % PORT_SPAN) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

/// Two distinct free loopback ports (listener and admin).
pub fn free_ports() -> (SocketAddr, SocketAddr) {
    (free_port(), free_port())
}

pub struct Vigil {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// The threads copying its stdout and stderr into `logs`, until each pipe closes.
    readers: Vec<std::thread::JoinHandle<()>>,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Vigil {
    /// `target/release/vigil`, the binary operators get (whole-program optimised), whichever
    /// profile built the tests (`make test` builds them with `testing`).
    pub fn binary() -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        let target = exe
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
            .expect("target/<profile>/deps");
        let bin = target.join("release").join("vigil");
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p vigil-proxy --bins` first (make test does)",
            bin.display()
        );
        bin
    }

    /// A fresh temp file path for a config.
    pub fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("{}-{name}", SEQ.fetch_add(1, Ordering::SeqCst)))
    }

    /// Writes `config` (which must listen on `listen` and `admin`) and runs
    /// `vigil run -c FILE --log-format json`.
    pub fn start(config: &str, listen: SocketAddr, admin: SocketAddr) -> Vigil {
        Self::start_with_env(config, listen, admin, &[])
    }

    /// [`Self::start`] with more environment variables.
    pub fn start_with_env(
        config: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        env: &[(&str, &str)],
    ) -> Vigil {
        let path = Self::temp_path("vigil.yaml");
        std::fs::write(&path, config).unwrap();
        let args = ["run", "-c", path.to_str().unwrap(), "--log-format", "json"];
        Self::spawn_with_env(&args, listen, admin, path.clone(), env, None)
    }

    /// [`Self::start`] with at most `nofile` open descriptors (soft and hard limit), as
    /// `prlimit --nofile=N:N` would.
    pub fn start_with_nofile(
        config: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        nofile: u64,
    ) -> Vigil {
        let path = Self::temp_path("vigil.yaml");
        std::fs::write(&path, config).unwrap();
        let args = ["run", "-c", path.to_str().unwrap(), "--log-format", "json"];
        Self::spawn_with_env(&args, listen, admin, path.clone(), &[], Some(nofile))
    }

    pub fn spawn(
        args: &[&str],
        listen: SocketAddr,
        admin: SocketAddr,
        config_path: PathBuf,
    ) -> Vigil {
        Self::spawn_with_env(args, listen, admin, config_path, &[], None)
    }

    fn spawn_with_env(
        args: &[&str],
        listen: SocketAddr,
        admin: SocketAddr,
        config_path: PathBuf,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> Vigil {
        // `prlimit` (util-linux) sets the limit and execs vigil: the child is vigil.
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(Self::binary());
                c
            }
            None => Command::new(Self::binary()),
        };
        cmd.args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start vigil");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = logs.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("VIGIL_TEST_ECHO").is_some() {
                        eprintln!("vigil| {line}");
                    }
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        Vigil {
            child,
            listen,
            admin,
            config_path,
            logs,
            readers,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until some log line contains every one of `needles` (stderr is read by
    /// another thread, so a line written just now may not be here yet).
    pub async fn wait_log(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .logs()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?}; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Makes vigil write one more line now and waits until it is here: then every line
    /// it wrote before is here too (its log lines share one pipe, read in order). For a
    /// check that a line is absent. The line is `configuration reloaded`, from a reload
    /// of the unchanged file (`POST /admin/reload`, with `token` if the admin API has
    /// one), which changes nothing.
    pub async fn sync_logs(&self, token: Option<&str>) {
        let reloads = |logs: &[String]| {
            logs.iter()
                .filter(|l| l.contains("configuration reloaded"))
                .count()
        };
        let before = reloads(&self.logs());
        let r = self.post_reload(token).await;
        assert_eq!(r.status, 200, "reload for a log marker: {}", r.body);
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads(&self.logs()) <= before {
            assert!(
                Instant::now() < deadline,
                "the reload's log line never came; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Log lines parsed as JSON (non-JSON lines skipped).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Asserts that nothing was logged at info or above but start-up, state changes and
    /// reloads: requests and handshakes, served or refused, leave no line.
    pub fn assert_quiet(&self) {
        let lines: Vec<String> = self
            .json_logs()
            .into_iter()
            .filter(|l| l["level"] != "DEBUG" && l["level"] != "TRACE")
            .filter(|l| {
                let m = l["fields"]["message"].as_str().unwrap_or_default();
                m != "vigil started"
                    && !m.starts_with("proxy worker threads pinned")
                    && m != "descriptor limit"
                    && !m.starts_with("the descriptor limit bounds")
                    && m != "configuration reloaded"
                    && !m.starts_with("backend is ")
            })
            .map(|l| l.to_string())
            .collect();
        assert!(lines.is_empty(), "log lines about requests: {lines:#?}");
    }

    /// State-change lines (those with `from` and `to` fields).
    pub fn transitions(&self) -> Vec<serde_json::Value> {
        self.json_logs()
            .into_iter()
            .filter(|v| v["fields"]["from"].is_string() && v["fields"]["to"].is_string())
            .collect()
    }

    /// Waits until the admin listener answers `/health/live`.
    pub async fn wait_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = crate::get(self.admin, "admin", "/health/live").await {
                if r.status == 200 {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "vigil exited with {status} before it was live; logs:\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "vigil not live after 30s; logs:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&mut self) {
        self.wait_live().await;
        let admin = self.admin;
        crate::wait_for_async("vigil ready", Duration::from_secs(30), || async move {
            matches!(crate::get(admin, "admin", "/health/ready").await, Ok(r) if r.status == 200)
        })
        .await;
    }

    /// vigil's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        let sig = nix::sys::signal::Signal::try_from(sig).expect("a known signal number");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("vigil is our child");
    }

    /// Polls for exit; None if still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                // Every line it wrote is in `logs` once its pipes are read to the end
                // (bounded: a process it started could hold them open).
                let readers = std::mem::take(&mut self.readers);
                let joined = tokio::task::spawn_blocking(move || {
                    for r in readers {
                        let _ = r.join();
                    }
                });
                let _ = tokio::time::timeout(Duration::from_secs(5), joined).await;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GET on the admin listener.
    /// `POST /admin/reload`, with a bearer token when given.
    pub async fn post_reload(&self, token: Option<&str>) -> crate::Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        crate::client::request(self.admin, "POST", "admin", "/admin/reload", &headers, "")
            .await
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> crate::Response {
        crate::get(self.admin, "admin", path)
            .await
            .expect("admin request")
    }

    /// The backend at `addr` in pool `pool`, as `/health/detailed` shows it.
    pub async fn backend_detail(&self, pool: &str, addr: SocketAddr) -> serde_json::Value {
        let d = self.admin_get("/health/detailed").await.json();
        d["pools"][pool]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == addr.to_string())
            .cloned()
            .unwrap()
    }

    /// Polls `/metrics` until `series` has `value` (counters bumped in Pingora's
    /// logging phase land just after the client has its answer).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = self.metric(series).await;
            if got == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {got:?}, wanted {value}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One metric sample's value, if the series exists.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").await.body;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            l.rsplit_once(' ')
                .filter(|(name, _)| *name == series)
                .and_then(|(_, v)| v.parse().ok())
        })
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
