//! What every test of the binaries shares: the real `hodei-server` (TLS,
//! as deployed) started and read the same way, real agents, the CLI, and
//! JSON over HTTP.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::process::{self, Proc};

pub const SERVER: &str = env!("CARGO_BIN_EXE_hodei-server");
pub const AGENT: &str = env!("CARGO_BIN_EXE_hodei-agent");
pub const CLI: &str = env!("CARGO_BIN_EXE_hodei");

pub struct Web {
    pub proc: Proc,
    pub grpc: String,
    /// `host:port` of the HTTP listener.
    pub http: String,
    pub dir: PathBuf,
    pub admin: String,
    agents: Vec<Proc>,
}

/// An answer: status, headers (lower-case names), body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Starts `hodei-server` with `args` and waits for the two lines it
/// prints once both listeners are bound; returns it with its gRPC
/// address (`https://host:port`) and its HTTP `host:port`. Every test that
/// runs the server binary starts it here.
pub fn launch<I, A>(args: I) -> (Proc, String, String)
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    let mut child = Command::new(SERVER)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Read on after the addresses: a closed pipe fails the server's next
    // print.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut grpc, mut http) = (None, None);
    while grpc.is_none() || http.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not print its addresses");
        if let Some(a) = line.strip_prefix("hodei-server: gRPC on ") {
            grpc = Some(a.to_string());
        }
        if let Some(a) = line.strip_prefix("hodei-server: metrics on ") {
            http = Some(
                a.trim_end_matches("/metrics")
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .to_string(),
            );
        }
    }
    (Proc(child), grpc.unwrap(), http.unwrap())
}

/// A server on `dir` with the short timers the tests use, and `extra`
/// settings.
pub fn launch_on(
    dir: &Path,
    listen: &str,
    http_listen: &str,
    extra: &[&str],
) -> (Proc, String, String) {
    let mut args: Vec<&OsStr> = vec!["--data-dir".as_ref(), dir.as_os_str()];
    for a in ["--listen", listen, "--http-listen", http_listen]
        .into_iter()
        .chain(["--heartbeat-interval", "200ms", "--cancel-grace", "500ms"])
        .chain(["--log-level", "warn"])
        .chain(extra.iter().copied())
    {
        args.push(a.as_ref());
    }
    launch(args)
}

/// Starts `hodei-agent` named `name` against `servers` (one address or
/// several, comma-separated), with its state in `state` and the join
/// token from `join_token`, and `extra` settings.
pub fn agent(servers: &str, name: &str, state: &Path, join_token: &Path, extra: &[&str]) -> Proc {
    Proc(
        Command::new(AGENT)
            .args(["--server", servers, "--name", name])
            .arg("--state-dir")
            .arg(state)
            .arg("--join-token-file")
            .arg(join_token)
            .args(["--reconnect-max", "300ms", "--log-level", "warn"])
            .arg("--spill-dir")
            .arg(state.join("spill"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// The `hodei` CLI against `servers`, trusting `home`'s CA, with `home`'s
/// admin token.
pub fn cli(servers: &str, home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(CLI)
        .args(["--server", servers, "--ca-file"])
        .arg(home.join("tls/ca.crt"))
        .arg("--token-file")
        .arg(home.join("admin.token"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The settings of the servers the HTTP API, browser and workflow tests
/// start.
const WEB_SERVER: &[&str] = &[
    "--heartbeat-timeout",
    "3s",
    "--weight",
    "default=3",
    "--weight",
    "acme=1",
];

impl Web {
    /// A server with its own CA in `dir`, and `agents` agents.
    pub fn start(dir: &Path, agents: usize) -> Web {
        let (proc, grpc, http) = launch_on(dir, "127.0.0.1:0", "127.0.0.1:0", WEB_SERVER);
        let admin = std::fs::read_to_string(dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let mut w = Web {
            proc,
            grpc,
            http,
            dir: dir.to_path_buf(),
            admin,
            agents: Vec::new(),
        };
        for i in 0..agents {
            w.add_agent(&format!("agent-{i}"));
        }
        w.wait_workers(agents);
        w
    }

    /// Kills the server (SIGKILL) and starts it again on the same data
    /// directory and addresses; the agents reconnect by themselves.
    pub fn kill_and_restart(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait_exit(Duration::from_secs(10));
        self.restart();
    }

    /// Starts the server again (after it stopped) on the same data
    /// directory and addresses.
    pub fn restart(&mut self) {
        let grpc_port = self.grpc.rsplit(':').next().unwrap().to_string();
        let (proc, grpc, http) = launch_on(
            &self.dir,
            &format!("127.0.0.1:{grpc_port}"),
            &self.http.clone(),
            WEB_SERVER,
        );
        self.proc = proc;
        self.grpc = grpc;
        self.http = http;
    }

    pub fn add_agent(&mut self, name: &str) {
        let state = self.dir.join(format!("state-{name}"));
        let join = self.dir.join("join.token");
        self.agents.push(agent(
            &self.grpc,
            name,
            &state,
            &join,
            &["--cancel-grace", "500ms"],
        ));
    }

    /// The `hodei` CLI with the admin token, over gRPC.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.grpc, &self.dir, args)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.http)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("tls/ca.crt")
    }

    /// `method path` with `token` (none when empty), `extra` headers and
    /// a JSON body.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        extra: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let auth = format!("Bearer {token}");
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if !token.is_empty() {
            headers.push(("Authorization", &auth));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let raw = hodei_examples::http_request(
            &self.http,
            method,
            path,
            &headers,
            body,
            Some(&self.ca()),
        )
        .unwrap();
        let (status, body) = process::status_and_body(&raw);
        let head = raw.split_once("\r\n\r\n").map_or("", |(h, _)| h);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer {
            status,
            headers,
            body,
        }
    }

    pub fn call(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> Answer {
        self.call_with(method, path, token, &[], body)
    }

    /// A client token of `role` for `tenants`, made through the API.
    pub fn token(&self, role: &str, tenants: &[&str]) -> String {
        let body =
            serde_json::json!({"role": role, "tenants": tenants, "name": format!("{role}-test")});
        let a = self.call(
            "POST",
            "/api/v1/tokens",
            &self.admin,
            Some(&body.to_string()),
        );
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()["token"].as_str().unwrap().to_string()
    }

    pub fn submit(&self, token: &str, spec: serde_json::Value) -> serde_json::Value {
        let body = serde_json::json!({ "spec": spec }).to_string();
        let a = self.call("POST", "/api/v1/jobs", token, Some(&body));
        assert_eq!(a.status, 201, "{}", a.body);
        a.json()["job"].clone()
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        let a = self.call("GET", &format!("/api/v1/jobs/{id}"), &self.admin, None);
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()
    }

    pub fn wait_state(&self, id: &str, want: &[&str]) -> serde_json::Value {
        for _ in 0..600 {
            let j = self.job(id);
            if want.contains(&j["state"]["kind"].as_str().unwrap()) {
                return j;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("job {id} never reached {want:?}: {}", self.job(id));
    }

    pub fn wait_workers(&self, n: usize) {
        for _ in 0..400 {
            let a = self.call("GET", "/api/v1/workers?status=ready", &self.admin, None);
            if a.status == 200 && a.json()["total"].as_u64().unwrap() as usize >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{n} workers never became ready");
    }
}
