//! Running one attempt of a job as real processes.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hodei_core::{
    Clock, Command, ExitStatus, JobSpec, LogStream, Masker, SecretDelivery, SystemClock, Timestamp,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::contain::{Cell, Containment};
use crate::pty;
use crate::secrets::secret_forms;

/// Settings of the executor.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ExecConfig {
    /// How long the job's output pipes may stay open after its main
    /// process ended (a grandchild holding them) before the group is killed.
    pub linger: Duration,
    /// Between SIGTERM and SIGKILL when a job times out.
    pub timeout_grace: Duration,
    /// Bytes read from a pipe at a time.
    pub read_size: usize,
    /// How every process of a job is kept in reach and stopped.
    pub containment: Containment,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            linger: Duration::from_secs(2),
            timeout_grace: Duration::from_secs(10),
            read_size: 64 * 1024,
            containment: Containment::detected(),
        }
    }
}

/// A piece of masked output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// Where it came from.
    pub stream: LogStream,
    /// When it was read.
    pub at: Timestamp,
    /// The bytes, with every secret form masked.
    pub data: Vec<u8>,
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// How the main process ended.
    pub exit: ExitStatus,
    /// From start to end.
    pub duration: Duration,
    /// Peak memory of the job, MiB: its cgroup's `memory.peak` where the
    /// memory controller is available, else the main process's peak
    /// resident set, sampled.
    pub peak_memory_mb: u64,
    /// It ran past its timeout and was stopped.
    pub timed_out: bool,
    /// It was cancelled.
    pub cancelled: bool,
    /// What it published in its outputs file (`$HODEI_OUTPUTS`), masked;
    /// empty when it wrote none, or a file refused (over
    /// [`hodei_core::MAX_OUTPUT_BYTES`] or not `KEY=value` lines, said in
    /// its log).
    pub outputs: BTreeMap<String, String>,
}

fn now() -> Timestamp {
    SystemClock.now()
}

/// Peak resident set (VmHWM) of a live process, MiB.
fn peak_rss_mb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Reads what the job published, masked as its log is: a secret value
/// written there is no more shown than in its output. A file refused is
/// said in the log and publishes nothing.
async fn read_outputs(
    path: &std::path::Path,
    masker: &Masker,
    out: &mpsc::Sender<Output>,
    note: &impl Fn(String) -> Output,
) -> BTreeMap<String, String> {
    // Read at most one byte past the cap: a job cannot make the agent
    // load a huge file.
    let read = async {
        let f = tokio::fs::File::open(path).await?;
        let mut bytes = Vec::new();
        f.take(hodei_core::MAX_OUTPUT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let parsed = match read.await {
        Ok(bytes) if bytes.is_empty() => return BTreeMap::new(),
        Ok(bytes) => hodei_core::parse_outputs(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => Err(format!("cannot read the outputs file: {e}")),
    };
    match parsed {
        Ok(o) => o
            .into_iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(&masker.mask(v.as_bytes())).into_owned();
                (k, v)
            })
            .collect(),
        Err(why) => {
            let _ = out
                .send(note(format!("{why}; no outputs published\n")))
                .await;
            BTreeMap::new()
        }
    }
}

async fn pump(
    mut pipe: impl AsyncRead + Unpin,
    stream: LogStream,
    masker: Masker,
    read_size: usize,
    out: mpsc::Sender<Output>,
) {
    let mut s = masker.stream();
    let mut buf = vec![0u8; read_size.max(1)];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = Vec::with_capacity(n);
        s.push(&buf[..n], &mut data);
        // A full channel slows the job's output down: backpressure, never
        // unbounded memory.
        if !data.is_empty()
            && out
                .send(Output {
                    stream,
                    at: now(),
                    data,
                })
                .await
                .is_err()
        {
            return;
        }
    }
    let mut rest = Vec::new();
    s.finish(&mut rest);
    if !rest.is_empty() {
        let _ = out
            .send(Output {
                stream,
                at: now(),
                data: rest,
            })
            .await;
    }
}

/// Waits for every output reader to end.
async fn join_all(readers: &mut [tokio::task::JoinHandle<()>]) {
    for r in readers {
        let _ = r.await;
    }
}

/// Runs one attempt of `spec`: its own process group inside the
/// configured [`Containment`], a fresh temporary working directory
/// (removed after) unless the spec names one, the environment it asks for
/// (plus `PATH`, `HOME` and `TMPDIR`), secrets as it asks, no descriptor
/// but its standard ones, and masked output on `out`.
///
/// `cancel` carries a grace period: when it fires every process of the job
/// gets SIGTERM, then SIGKILL after the grace. The same happens at the
/// spec's timeout. When the main process has ended, the output pipes get
/// `linger` to close; then every process of the job is killed (those that
/// left its process group or session too), and the pipes get one more
/// `linger` before reading stops: no process outlives its job and nothing
/// can hold the attempt open. Writing stdin, draining output, the timeout
/// and cancel run independently: none waits on another.
///
/// # Cancel safety
///
/// Dropping the future kills the main process (`kill_on_drop`) and the
/// job's cell, which kills whatever is left in its cgroup.
pub async fn run(
    spec: &JobSpec,
    config: &ExecConfig,
    out: mpsc::Sender<Output>,
    mut cancel: oneshot::Receiver<Duration>,
) -> Finished {
    let started = Instant::now();
    let note = |text: String| Output {
        stream: LogStream::System,
        at: now(),
        data: text.into_bytes(),
    };
    let not_started = |duration| Finished {
        exit: ExitStatus::NotStarted,
        duration,
        peak_memory_mb: 0,
        timed_out: false,
        cancelled: false,
        outputs: BTreeMap::new(),
    };
    let dir = match tempfile::Builder::new().prefix("hodei-job-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            let _ = out
                .send(note(format!("cannot create a temporary directory: {e}\n")))
                .await;
            return not_started(started.elapsed());
        }
    };
    let mut cmd = match &spec.command {
        Command::Argv(argv) => {
            let Some((program, args)) = argv.split_first() else {
                let _ = out.send(note("empty command\n".into())).await;
                return not_started(started.elapsed());
            };
            let mut c = tokio::process::Command::new(program);
            c.args(args);
            c
        }
        Command::Script(script) => {
            let path = dir.path().join("job.sh");
            // A failing step or an unset variable fails the job.
            if let Err(e) = std::fs::write(&path, format!("set -eu\n{script}\n")) {
                let _ = out
                    .send(note(format!("cannot write the script: {e}\n")))
                    .await;
                return not_started(started.elapsed());
            }
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg(path);
            c
        }
    };
    cmd.current_dir(
        spec.working_dir
            .as_deref()
            .map_or(dir.path(), std::path::Path::new),
    );
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    cmd.env("HOME", dir.path());
    cmd.env("TMPDIR", dir.path());
    cmd.envs(&spec.env);
    // Where the job may publish small outputs for the steps after it.
    let outputs_file = dir.path().join("hodei-outputs");
    if let Err(e) = std::fs::write(&outputs_file, b"") {
        let _ = out
            .send(note(format!("cannot create the outputs file: {e}\n")))
            .await;
        return not_started(started.elapsed());
    }
    cmd.env("HODEI_OUTPUTS", &outputs_file);
    let stdin_json = spec.secret_delivery == SecretDelivery::StdinJson && !spec.secrets.is_empty();
    if !stdin_json {
        cmd.envs(spec.secrets.iter().map(|s| (&s.name, &s.value)));
    }
    cmd.stdin(if stdin_json {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut terminal = None;
    if spec.pty {
        match pty::open() {
            Ok(p) => {
                if let Err(e) = p.attach(cmd.as_std_mut(), !stdin_json) {
                    let _ = out
                        .send(note(format!("cannot set up a terminal: {e}\n")))
                        .await;
                    return not_started(started.elapsed());
                }
                cmd.env("TERM", "xterm-256color");
                terminal = Some(p.master);
            }
            Err(e) => {
                let _ = out
                    .send(note(format!("cannot open a terminal: {e}\n")))
                    .await;
                return not_started(started.elapsed());
            }
        }
    } else {
        cmd.stdout(Stdio::piped());
        cmd.stderr(Stdio::piped());
        cmd.process_group(0);
    }
    // Built before the job starts: for a large secret it takes a while,
    // and output must be drained from the first byte.
    let masker = Masker::new(
        spec.secrets
            .iter()
            .flat_map(|s| secret_forms(s.value.as_bytes())),
    )
    .unwrap_or_else(|_| Masker::none());
    cmd.kill_on_drop(true);
    let mut cell = match config.containment.prepare(cmd.as_std_mut()) {
        Ok(c) => c,
        Err(e) => {
            let _ = out
                .send(note(format!("cannot contain the job: {e}\n")))
                .await;
            return not_started(started.elapsed());
        }
    };
    let spawned = cell.spawn(&mut cmd);
    // The parent's copies of the terminal's far end must close, or its
    // reader never sees the end.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let _ = out.send(note(format!("cannot start the job: {e}\n"))).await;
            return not_started(started.elapsed());
        }
    };
    let pid = child.id().unwrap_or(0);
    // stdin is written by a task of its own: a job that prints before it
    // reads must find its output drained, and the timeout and cancel
    // below must not wait on the write.
    let stdin_writer = match (stdin_json, child.stdin.take()) {
        (true, Some(mut stdin)) => {
            let doc: serde_json::Map<String, serde_json::Value> = spec
                .secrets
                .iter()
                .map(|s| (s.name.clone(), serde_json::Value::String(s.value.clone())))
                .collect();
            let bytes = serde_json::Value::Object(doc).to_string();
            Some(tokio::spawn(async move {
                // A job that does not read its stdin is not an error.
                let _ = stdin.write_all(bytes.as_bytes()).await;
            }))
        }
        _ => None,
    };
    let mut readers = Vec::new();
    if let Some(master) = terminal {
        readers.push(tokio::spawn(pump(
            tokio::fs::File::from_std(std::fs::File::from(master)),
            LogStream::Stdout,
            masker.clone(),
            config.read_size,
            out.clone(),
        )));
    }
    if let Some(p) = child.stdout.take() {
        readers.push(tokio::spawn(pump(
            p,
            LogStream::Stdout,
            masker.clone(),
            config.read_size,
            out.clone(),
        )));
    }
    if let Some(p) = child.stderr.take() {
        readers.push(tokio::spawn(pump(
            p,
            LogStream::Stderr,
            masker.clone(),
            config.read_size,
            out.clone(),
        )));
    }

    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut peak = 0;
    let mut sample = tokio::time::interval(Duration::from_millis(50));
    let (mut timed_out, mut cancelled) = (false, false);
    let mut grace = None;
    let mut cancel_open = true;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            _ = sample.tick(), if !cell.reports_memory() => peak = peak.max(peak_rss_mb(pid).unwrap_or(0)),
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() && grace.is_none() => {
                timed_out = true;
                grace = Some(config.timeout_grace);
                cell.signal_all(libc::SIGTERM);
                let _ = out.send(note(format!("timed out after {:?}; stopping\n", spec.timeout.unwrap_or_default()))).await;
            }
            g = &mut cancel, if grace.is_none() && cancel_open => {
                match g {
                    Ok(g) => {
                        cancelled = true;
                        grace = Some(g);
                        cell.signal_all(libc::SIGTERM);
                    }
                    // A dropped sender is not a cancel; stop listening.
                    Err(_) => cancel_open = false,
                }
            }
        }
        if let Some(g) = grace {
            // SIGTERM sent: wait out the grace, then kill.
            match tokio::time::timeout(g, child.wait()).await {
                Ok(s) => break s,
                Err(_) => {
                    cell.signal_all(libc::SIGKILL);
                    break child.wait().await;
                }
            }
        }
    };
    cell.main_exited();
    if let Some(w) = stdin_writer {
        w.abort();
    }
    // The main process is gone; descendants may still hold the pipes.
    let linger = tokio::time::sleep(config.linger);
    tokio::pin!(linger);
    let all_closed = tokio::select! {
        () = join_all(&mut readers) => true,
        _ = &mut linger => false,
    };
    // Nothing outlives its job, whatever group or session it moved to.
    let cell = tokio::task::spawn_blocking(move || {
        cell.kill_all();
        cell
    })
    .await
    .ok();
    if !all_closed {
        // Every process of the job is gone, so the pipes close now unless
        // something outside the job holds them: that wait is bounded too.
        if tokio::time::timeout(config.linger, join_all(&mut readers))
            .await
            .is_err()
        {
            for r in &readers {
                r.abort();
            }
            let _ = out
                .send(note(
                    "output still held open by a process outside the job; stopped reading\n".into(),
                ))
                .await;
        }
    }
    if let Some(p) = cell.as_ref().and_then(Cell::peak_memory_mb) {
        peak = p;
    }
    drop(cell);
    let exit = match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => ExitStatus::Code(c),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::NotStarted,
        },
        Err(_) => ExitStatus::NotStarted,
    };
    let outputs = read_outputs(&outputs_file, &masker, &out, &note).await;
    drop(dir);
    Finished {
        exit,
        duration: started.elapsed(),
        peak_memory_mb: peak,
        timed_out,
        outputs,
        cancelled,
    }
}
