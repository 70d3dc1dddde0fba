//! Output and helpers of the `hodei` command-line client.

use std::io::Write;
use std::process::ExitCode;

use hodei_core::{Clock, JobId, LogStream, SystemClock};
use hodei_hwp::client::Client;
use hodei_hwp::proto::{self, JobStateKind};
use serde_json::json;
use tonic::Status;

/// A failure to report: one line, and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// The line.
    pub message: String,
    /// 2 for bad usage, 1 otherwise.
    pub code: u8,
}

impl Failure {
    /// Bad usage or input: exit 2.
    pub fn usage(m: impl Into<String>) -> Self {
        Failure {
            message: m.into(),
            code: 2,
        }
    }

    /// The server or the network failed: exit 1.
    pub fn server(m: impl Into<String>) -> Self {
        Failure {
            message: m.into(),
            code: 1,
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            tonic::Code::InvalidArgument => 2,
            _ => 1,
        };
        Failure {
            message: format!("{}: {}", code_name(s.code()), s.message()),
            code,
        }
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}

/// The name of a state kind, as the CLI shows and parses it.
pub fn state_name(k: JobStateKind) -> &'static str {
    match k {
        JobStateKind::Unspecified => "unknown",
        JobStateKind::Pending => "pending",
        JobStateKind::Queued => "queued",
        JobStateKind::Assigned => "assigned",
        JobStateKind::Running => "running",
        JobStateKind::Succeeded => "succeeded",
        JobStateKind::Failed => "failed",
        JobStateKind::Cancelled => "cancelled",
        JobStateKind::TimedOut => "timed_out",
        JobStateKind::Lost => "lost",
    }
}

/// Parses a state name (`queued`, `running`, `timed_out`, ...).
pub fn parse_state(s: &str) -> Result<JobStateKind, String> {
    let all = [
        JobStateKind::Pending,
        JobStateKind::Queued,
        JobStateKind::Assigned,
        JobStateKind::Running,
        JobStateKind::Succeeded,
        JobStateKind::Failed,
        JobStateKind::Cancelled,
        JobStateKind::TimedOut,
        JobStateKind::Lost,
    ];
    let want = s.to_ascii_lowercase().replace('-', "_");
    all.into_iter()
        .find(|k| state_name(*k) == want)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|k| state_name(*k)).collect();
            format!("state {s:?}: one of {}", names.join(", "))
        })
}

/// A job's state kind.
pub fn kind(job: &proto::Job) -> JobStateKind {
    job.state
        .as_ref()
        .and_then(|s| JobStateKind::try_from(s.kind).ok())
        .unwrap_or(JobStateKind::Unspecified)
}

/// The state as people read it: a failed attempt waiting for its retry
/// says so, and when the next attempt is due.
pub fn state_text(j: &proto::Job) -> String {
    let name = state_name(kind(j));
    if j.next_attempt_at_ms == 0 {
        return name.to_string();
    }
    let now = SystemClock.now().0;
    let wait = j.next_attempt_at_ms.saturating_sub(now);
    if wait == 0 {
        format!("{name}, retrying now")
    } else {
        format!(
            "{name}, retry in {}",
            humantime::format_duration(std::time::Duration::from_secs(wait.div_ceil(1000)))
        )
    }
}

/// How a job's exit reads: `0`, `signal 9`, `not started` or empty.
pub fn exit_text(job: &proto::Job) -> String {
    use proto::exit_status::Kind;
    match job
        .state
        .as_ref()
        .and_then(|s| s.exit.as_ref())
        .and_then(|e| e.kind)
    {
        Some(Kind::Code(c)) => c.to_string(),
        Some(Kind::Signal(s)) => format!("signal {s}"),
        Some(Kind::NotStarted(_)) => "not started".into(),
        None if kind(job) == JobStateKind::Succeeded => "0".into(),
        None => String::new(),
    }
}

/// The exit code `hodei submit --wait` ends with: the job's own, 128 plus
/// the signal, or 1 for any other failed end.
pub fn exit_code(job: &proto::Job) -> ExitCode {
    use proto::exit_status::Kind;
    if kind(job) == JobStateKind::Succeeded {
        return ExitCode::SUCCESS;
    }
    match job
        .state
        .as_ref()
        .and_then(|s| s.exit.as_ref())
        .and_then(|e| e.kind)
    {
        Some(Kind::Code(c)) if (1..=255).contains(&c) => ExitCode::from(c as u8),
        Some(Kind::Signal(s)) if (1..=127).contains(&s) => ExitCode::from(128 + s as u8),
        _ => ExitCode::FAILURE,
    }
}

/// Waits (watching, not polling) until the job is final: a failed attempt
/// with retries left is not the end. Returns it.
pub async fn wait_end(c: &mut Client, job: JobId) -> Result<proto::Job, Failure> {
    loop {
        let mut events = c.watch(Some(job), true).await?;
        loop {
            let j = c.get(job).await?;
            if j.is_final {
                return Ok(j);
            }
            match events.message().await {
                Ok(Some(_)) => continue,
                // The server went away: reconnect and look again.
                Ok(None) | Err(_) => break,
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn write_chunk(chunk: &proto::LogChunk, prefix: Option<&str>) {
    // A stream this client does not know is shown as the system's.
    let stream =
        hodei_hwp::log_stream_from_wire(chunk.stream, "stream").unwrap_or(LogStream::System);
    let data: &[u8] = &chunk.data;
    let mut buf = Vec::with_capacity(data.len() + 16);
    match prefix {
        None => buf.extend_from_slice(data),
        Some(p) => {
            for line in data.split_inclusive(|b| *b == b'\n') {
                buf.extend_from_slice(p.as_bytes());
                buf.extend_from_slice(line);
            }
        }
    }
    // With a prefix (several jobs interleaved) everything goes to stdout,
    // in the order it came.
    let _ = if stream == LogStream::Stdout || prefix.is_some() {
        std::io::stdout().lock().write_all(&buf)
    } else {
        std::io::stderr().lock().write_all(&buf)
    };
}

/// Prints a job's stored output: stdout to stdout, the rest to stderr.
pub async fn print_logs(c: &mut Client, job: JobId) -> Result<(), Failure> {
    let mut s = c.logs(job, false).await?;
    while let Some(chunk) = s.message().await? {
        write_chunk(&chunk, None);
    }
    Ok(())
}

/// Prints a job's output as it comes, until the job ends; each line after
/// `prefix` when one is given.
pub async fn follow_logs(c: &mut Client, job: JobId, prefix: Option<&str>) -> Result<(), Failure> {
    let mut s = c.logs(job, true).await?;
    while let Some(chunk) = s.message().await? {
        write_chunk(&chunk, prefix);
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// A spec file read and parsed: TOML by its `.toml` extension, JSON
/// otherwise; `-` reads JSON from stdin.
///
/// # Errors
///
/// Bad usage naming the file: it cannot be read or does not parse.
pub fn read_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, Failure> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure::usage(format!("stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
    };
    if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    } else {
        serde_json::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    }
}

/// Every problem of a spec as one usage error.
pub fn invalid(errors: &hodei_core::SpecErrors) -> Failure {
    let all: Vec<String> = errors.errors().iter().map(ToString::to_string).collect();
    Failure::usage(all.join("; "))
}

/// Where results go, as tables or JSON lines.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// JSON lines instead of tables.
    pub json: bool,
}

fn age(ms: u64) -> String {
    let now = SystemClock.now().0;
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// A job as JSON (never with secret values: the server sends none).
pub fn job_json(j: &proto::Job) -> serde_json::Value {
    let spec = j.spec.as_ref();
    json!({
        "id": j.id,
        "name": spec.map(|s| s.name.clone()).unwrap_or_default(),
        "tenant": spec.map(|s| s.tenant.clone()).unwrap_or_default(),
        "priority": spec.and_then(|s| s.priority),
        "state": state_name(kind(j)),
        "final": j.is_final,
        "awaiting_retry": j.next_attempt_at_ms != 0,
        "next_attempt_at_ms": (j.next_attempt_at_ms != 0).then_some(j.next_attempt_at_ms),
        "attempt": j.attempt,
        "worker": j.state.as_ref().map(|s| s.worker_id.clone()).unwrap_or_default(),
        "exit": exit_text(j),
        "created_at_ms": j.created_at_ms,
        "updated_at_ms": j.updated_at_ms,
    })
}

/// Formats rows as a table with aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

impl Output {
    /// A note for people (stderr; nothing in JSON mode).
    pub fn note(&self, s: &str) {
        if !self.json {
            eprintln!("{s}");
        }
    }

    /// A line of the demo's story (stdout; nothing in JSON mode).
    pub fn say(&self, s: &str) {
        if !self.json {
            println!("{s}");
        }
    }

    /// One job; `existing` when an idempotency key returned an earlier one.
    pub fn job(&self, j: &proto::Job, existing: bool) {
        if self.json {
            let mut v = job_json(j);
            if existing {
                v["existing"] = json!(true);
            }
            println!("{v}");
        } else {
            if existing {
                eprintln!("(an earlier submission with this idempotency key)");
            }
            self.jobs(std::slice::from_ref(j));
        }
    }

    /// Where the next page of a listing starts: a last JSON line, or a
    /// note for people.
    pub fn next_page(&self, token: &str) {
        if self.json {
            println!("{}", json!({ "next_page_token": token }));
        } else {
            eprintln!("more: hodei list --page-token {token} (or --all)");
        }
    }

    /// Several jobs.
    pub fn jobs(&self, jobs: &[proto::Job]) {
        if self.json {
            for j in jobs {
                println!("{}", job_json(j));
            }
            return;
        }
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| {
                let spec = j.spec.as_ref();
                vec![
                    j.id.clone(),
                    spec.map(|s| s.name.clone()).unwrap_or_default(),
                    spec.map(|s| s.tenant.clone()).unwrap_or_default(),
                    spec.and_then(|s| s.priority).unwrap_or(4).to_string(),
                    state_text(j),
                    j.attempt.to_string(),
                    exit_text(j),
                    age(j.created_at_ms),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "ID", "NAME", "TENANT", "PRIO", "STATE", "ATTEMPT", "EXIT", "CREATED"
                ],
                &rows
            )
        );
    }

    /// Workers.
    pub fn workers(&self, workers: &[proto::Worker]) {
        let res = |r: &Option<proto::Resources>| {
            r.as_ref().map_or_else(String::new, |r| {
                format!("{}m/{}MiB", r.cpu_millis, r.memory_mb)
            })
        };
        if self.json {
            for w in workers {
                println!(
                    "{}",
                    json!({
                        "id": w.id, "name": w.name, "status": w.status,
                        "labels": w.labels, "capacity": res(&w.capacity),
                        "allocated": res(&w.allocated), "cpu_percent": w.cpu_percent,
                        "memory_used_mb": w.memory_used_mb, "load_1m": w.load_1m,
                        "jobs": w.jobs, "last_heartbeat_ms": w.last_heartbeat_ms,
                    })
                );
            }
            return;
        }
        let rows: Vec<Vec<String>> = workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.name.clone(),
                    w.status.clone(),
                    res(&w.capacity),
                    res(&w.allocated),
                    format!("{:.0}%", w.cpu_percent),
                    w.jobs.len().to_string(),
                    age(w.last_heartbeat_ms),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "ID",
                    "NAME",
                    "STATUS",
                    "CAPACITY",
                    "ALLOCATED",
                    "CPU",
                    "JOBS",
                    "HEARTBEAT"
                ],
                &rows
            )
        );
    }

    /// A state change.
    pub fn event(&self, e: &proto::JobEvent) {
        let name = |s: &Option<proto::JobState>| {
            s.as_ref()
                .and_then(|s| JobStateKind::try_from(s.kind).ok())
                .map_or("-", state_name)
        };
        if self.json {
            println!(
                "{}",
                json!({
                    "seq": e.seq, "job": e.job_id, "from": name(&e.from),
                    "to": name(&e.to), "attempt": e.attempt, "at_ms": e.at_ms,
                })
            );
        } else {
            println!(
                "{}  {} -> {}  (attempt {})",
                e.job_id,
                name(&e.from),
                name(&e.to),
                e.attempt
            );
        }
        let _ = std::io::stdout().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_by_name() {
        assert_eq!(parse_state("Timed-Out"), Ok(JobStateKind::TimedOut));
        assert!(parse_state("done").unwrap_err().contains("succeeded"));
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz\n");
    }
}
