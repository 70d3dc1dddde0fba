//! The executor with real processes: output, failures, secrets, timeouts,
//! cancellation and processes that try to outlive their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use hodei_agent::{ExecConfig, Finished, LogStream, Output};
use hodei_core::{ExitStatus, JobSpec, Secret, SecretDelivery};

fn config() -> ExecConfig {
    {
        let mut c = ExecConfig::default();
        c.linger = Duration::from_millis(300);
        c.timeout_grace = Duration::from_millis(300);
        c
    }
}

/// Runs `spec`, collecting output; `cancel_after` cancels with a 200 ms grace.
fn exec(spec: JobSpec, cancel_after: Option<Duration>) -> (Finished, Vec<Output>) {
    let (f, out, _) = common::exec(&config(), spec, cancel_after);
    (f, out)
}

fn text(out: &[Output], stream: LogStream) -> String {
    let bytes: Vec<u8> = out
        .iter()
        .filter(|o| o.stream == stream)
        .flat_map(|o| o.data.clone())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn script(s: &str) -> JobSpec {
    JobSpec::script(s)
}

#[test]
fn output_and_exit_code_are_reported() {
    let (f, out) = exec(
        JobSpec::argv(["sh", "-c", "echo hello; echo oops >&2; exit 3"]),
        None,
    );
    assert_eq!(f.exit, ExitStatus::Code(3));
    assert_eq!(text(&out, LogStream::Stdout), "hello\n");
    assert_eq!(text(&out, LogStream::Stderr), "oops\n");
    assert!(!f.timed_out && !f.cancelled);
}

#[test]
fn scripts_stop_at_the_first_failing_step() {
    let (f, out) = exec(script("echo one\nfalse\necho two"), None);
    assert_eq!(f.exit, ExitStatus::Code(1));
    assert_eq!(text(&out, LogStream::Stdout), "one\n");
    let (f, _) = exec(script("echo \"$UNSET_VARIABLE\""), None);
    assert_ne!(f.exit, ExitStatus::Code(0), "unset variables fail the job");
}

#[test]
fn secrets_never_appear_even_split_or_encoded() {
    let mut spec = script(
        "printf 'a=%s' \"${TOKEN%??????}\"; sleep 0.2; printf '%s\\n' \"${TOKEN#${TOKEN%??????}}\"\n\
         printf 'b=%s\\n' \"$(printf '%s' \"xy$TOKEN\" | base64)\"\n\
         echo \"env: $TOKEN\"",
    );
    spec.secrets.push(Secret {
        name: "TOKEN".into(),
        value: "hunter2-correct-horse".into(),
    });
    let (f, out) = exec(spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    let all = text(&out, LogStream::Stdout);
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.starts_with("a=***\n"), "{all}");
    assert!(all.contains("env: ***"), "{all}");
    // The base64 line keeps only what the prefix and padding determine.
    let b64 = all.lines().find(|l| l.starts_with("b=")).unwrap();
    assert!(b64.contains("***"), "{b64}");
    assert!(b64.len() < 16, "{b64}");
}

#[test]
fn secrets_can_arrive_as_json_on_stdin() {
    let mut spec = script("cat");
    spec.secret_delivery = SecretDelivery::StdinJson;
    spec.secrets.push(Secret {
        name: "DB_PASSWORD".into(),
        value: "correct-horse-battery".into(),
    });
    spec.env.insert("VISIBLE".into(), "yes".into());
    let (f, out) = exec(spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    assert_eq!(text(&out, LogStream::Stdout), r#"{"DB_PASSWORD":"***"}"#);
}

#[test]
fn a_timeout_stops_the_whole_group() {
    let mut spec = script("sleep 30");
    spec.timeout = Some(Duration::from_millis(300));
    let started = Instant::now();
    let (f, _) = exec(spec, None);
    assert!(f.timed_out);
    assert_eq!(f.exit, ExitStatus::Signal(libc::SIGTERM));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn cancel_sends_sigterm_then_sigkill() {
    let (f, _) = exec(
        script("trap '' TERM; sleep 30"),
        Some(Duration::from_millis(200)),
    );
    assert!(f.cancelled);
    assert_eq!(
        f.exit,
        ExitStatus::Signal(libc::SIGKILL),
        "TERM was ignored, so KILL"
    );
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(s) => !s
            .lines()
            .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X'))),
        Err(_) => false,
    }
}

/// The pid the job printed as `child <pid>` is gone (within a second, for
/// the kernel to tear it down).
fn assert_child_gone(out: &[Output]) {
    let pid: i32 = text(out, LogStream::Stdout)
        .trim()
        .trim_start_matches("child ")
        .parse()
        .unwrap();
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !alive(pid)
    });
    assert!(gone, "grandchild {pid} survived its job");
}

#[test]
fn a_grandchild_ignoring_sigterm_does_not_survive() {
    let mut spec = script("(trap '' TERM; exec sleep 60) & echo \"child $!\"; sleep 60");
    spec.timeout = Some(Duration::from_millis(300));
    let (f, out) = exec(spec, None);
    assert!(f.timed_out);
    assert_child_gone(&out);
}

#[test]
fn a_grandchild_holding_stdout_does_not_hang_the_job() {
    let started = Instant::now();
    let (f, out) = exec(script("sleep 30 &\necho \"child $!\""), None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the grandchild"
    );
    assert_child_gone(&out);
}

#[test]
fn a_huge_line_without_newline_flows_through() {
    let (f, out) = exec(script("head -c 10000000 /dev/zero | tr '\\0' 'a'"), None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    let n: usize = out
        .iter()
        .filter(|o| o.stream == LogStream::Stdout)
        .map(|o| o.data.len())
        .sum();
    assert_eq!(n, 10_000_000);
}

#[test]
fn a_missing_program_is_reported_not_started() {
    let (f, out) = exec(JobSpec::argv(["/nonexistent/program"]), None);
    assert_eq!(f.exit, ExitStatus::NotStarted);
    assert!(text(&out, LogStream::System).contains("cannot start"));
}

#[test]
fn a_pty_job_sees_a_terminal_and_is_still_stopped_as_a_group() {
    let mut spec = script("if [ -t 1 ]; then echo on-a-terminal; fi; echo err >&2; stty size");
    spec.pty = true;
    let (f, out) = exec(spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    let text = text(&out, LogStream::Stdout);
    assert!(text.contains("on-a-terminal"), "{text:?}");
    assert!(text.contains("err"), "{text:?}");
    assert!(text.contains("40 120"), "{text:?}");

    let mut spec = script("sleep 30");
    spec.pty = true;
    let (f, _) = exec(spec, Some(Duration::from_millis(200)));
    assert!(f.cancelled);
    assert_eq!(f.exit, ExitStatus::Signal(15));
}

fn stdin_spec(script_text: &str) -> JobSpec {
    let mut spec = script(script_text);
    spec.secret_delivery = SecretDelivery::StdinJson;
    // 64 KiB: far more than a pipe holds, so writing it blocks until the
    // job reads.
    spec.secrets = vec![Secret {
        name: "BIG".into(),
        value: "k".repeat(64 * 1024),
    }];
    spec
}

#[test]
fn a_job_printing_before_reading_a_large_stdin_does_not_deadlock() {
    let spec = stdin_spec("head -c 400000 /dev/zero | tr '\\0' 'x'\necho\nwc -c | tr -d ' '");
    let (f, out) = exec(spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    let text = text(&out, LogStream::Stdout);
    assert_eq!(text.matches('x').count(), 400_000);
    // The whole JSON document arrived: {"BIG":"kkk..."}.
    assert!(
        text.trim_end().ends_with(&(64 * 1024 + 10).to_string()),
        "{}",
        &text[text.len().saturating_sub(40)..]
    );
}

#[test]
fn a_timeout_fires_while_stdin_is_still_being_written() {
    let mut spec = stdin_spec("head -c 400000 /dev/zero | tr '\\0' 'x'\nsleep 300");
    spec.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let (f, _) = exec(spec, None);
    assert!(f.timed_out);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_cancel_lands_while_stdin_is_still_being_written() {
    let spec = stdin_spec("sleep 300");
    let started = Instant::now();
    let (f, _) = exec(spec, Some(Duration::from_millis(300)));
    assert!(f.cancelled);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A descriptor this process holds without close-on-exec, as one
/// inherited from a parent would be.
fn leak_a_descriptor() -> i32 {
    // SAFETY: dup returns a new descriptor (without close-on-exec) or -1.
    let fd = unsafe { libc::dup(2) };
    assert!(fd > 2);
    fd
}

fn open_fds(spec: JobSpec) -> Vec<String> {
    let (f, out) = exec(spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    let mut fds: Vec<String> = text(&out, LogStream::Stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    fds.sort();
    fds
}

#[test]
fn a_job_gets_only_its_standard_descriptors() {
    let leaked = leak_a_descriptor();
    // `ls` opens the directory itself: that is the one extra descriptor.
    let fds = open_fds(JobSpec::argv(["ls", "/proc/self/fd"]));
    assert_eq!(fds, ["0", "1", "2", "3"], "leaked {leaked}");
    let mut spec = JobSpec::argv(["ls", "/proc/self/fd"]);
    spec.pty = true;
    let fds = open_fds(spec);
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "under a terminal, leaked {leaked}"
    );
    // SAFETY: closing the descriptor dup'ed above.
    unsafe { libc::close(leaked) };
}

/// A PEM-like multi-line secret printed under a terminal (which turns each
/// `\n` into `\r\n`) in every way a script might: as is, line by line,
/// base64 wrapped at 76 and 64 columns, and URL-safe.
#[test]
fn a_multi_line_secret_is_masked_under_a_terminal() {
    let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\nMzEfYyjiWA4R4/M2bS1GB4t7NXp98C3S\n-----END PRIVATE KEY-----";
    let mut spec = script(
        "printf '%s\\n' \"$KEY\"\n\
         printf '%s\\n' \"$KEY\" | while IFS= read -r line; do echo \"$line\"; done\n\
         printf 'prefix %s' \"$KEY\" | base64\n\
         printf 'ab%s' \"$KEY\" | base64 -w 64\n\
         printf '%s' \"$KEY\" | base64 -w 0 | tr '+/' '-_'; echo\n\
         echo end",
    );
    spec.pty = true;
    spec.secrets = vec![Secret {
        name: "KEY".into(),
        value: key.into(),
    }];
    let (f, out) = exec(spec, None);
    assert_eq!(f.exit, ExitStatus::Code(0));
    let text = text(&out, LogStream::Stdout);
    assert!(text.contains("\r\n"), "not a terminal: {text:?}");
    assert!(text.contains("end"), "{text:?}");
    for line in key.lines().skip(1).take(3) {
        assert!(!text.contains(line), "{line} in {text:?}");
    }
    // No piece of any encoding of the body survives.
    let flat: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    for piece in ["TUlJRXZR", "RVZRSUJB", "BEWUpUVXQ5", "MIIEvQIB"] {
        assert!(!flat.contains(piece), "{piece} in {text:?}");
    }
    assert!(text.matches("***").count() >= 5, "{text:?}");
}
