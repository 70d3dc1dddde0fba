//! Containment of a job's whole process tree.
//!
//! A process group is not enough: a job's descendants may call `setsid` or
//! double-fork and leave it. Two mechanisms keep every descendant in
//! reach, chosen once per agent ([`ContainmentMode`]):
//!
//! - **cgroup v2**: each attempt gets a cgroup of its own below the
//!   agent's (a delegated subtree, detected at start). Its processes are
//!   placed there before `exec`, nothing they do takes them out, and the
//!   whole cgroup is killed at once (`cgroup.kill`). With the memory
//!   controller available, `memory.peak` gives the job's true peak.
//! - **Child subreaper**: the agent process marks itself
//!   `PR_SET_CHILD_SUBREAPER`, and so does each job's main process (the
//!   flag survives `exec`). While the main process lives, every orphaned
//!   descendant is re-parented to it, so its tree, read from `/proc`, holds
//!   the whole job; once it ends, what is left is re-parented to the agent,
//!   which kills every child it did not start as a job's main process.
//!   Because of that sweep, a program that links the agent and runs jobs in
//!   this mode must not start child processes of its own in the same
//!   process.
//!
//! In both modes a job's process starts with every descriptor but its
//! standard input, output and error (and its terminal) closed.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

/// How an agent contains its jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContainmentMode {
    /// A cgroup per job where the agent can create one, else the child
    /// subreaper.
    #[default]
    Auto,
    /// A cgroup v2 per job; refused where the agent cannot create one.
    Cgroup,
    /// The agent and each job's main process as child subreapers, with a
    /// sweep of `/proc`.
    Subreaper,
}

impl std::str::FromStr for ContainmentMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ContainmentMode::Auto),
            "cgroup" => Ok(ContainmentMode::Cgroup),
            "subreaper" => Ok(ContainmentMode::Subreaper),
            other => Err(format!(
                "unknown containment {other:?}: expected auto, cgroup or subreaper"
            )),
        }
    }
}

/// The containment an agent uses for every job; cheap to clone.
///
/// The one made by [`Containment::detected`] (the default) chooses its
/// mechanism on first use, so building a configuration does no I/O.
#[derive(Clone, Debug)]
pub struct Containment {
    inner: Arc<OnceLock<Inner>>,
}

#[derive(Debug)]
enum Inner {
    Cgroup(CgroupRoot),
    Subreaper,
}

/// The agent's own cgroup subtree: `parent` holds one cgroup per attempt.
#[derive(Debug)]
struct CgroupRoot {
    parent: PathBuf,
    memory: bool,
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        // Empty by now: every cell removes itself.
        let _ = fs::remove_dir(&self.parent);
    }
}

/// Main processes of running jobs, by pid: the subreaper sweep spares
/// them. Spawning holds the lock from fork to registration, so the sweep
/// never sees a new main process it does not know.
fn live_mains() -> &'static Mutex<HashSet<u32>> {
    static LIVE: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
}

/// Set once this process has become a child subreaper.
static SUBREAPER: AtomicBool = AtomicBool::new(false);

static CELL_SEQ: AtomicU64 = AtomicU64::new(0);

/// `Auto`: a cgroup where one can be created, else the subreaper.
fn detect() -> Inner {
    match CgroupRoot::create() {
        Ok(root) => Inner::Cgroup(root),
        Err(e) => {
            tracing::debug!("no cgroup for jobs ({e}); using the child subreaper");
            if let Err(e) = become_subreaper() {
                // Neither works: jobs still run, kept to their process group
                // and the /proc tree of their main process.
                tracing::warn!("no containment available ({e}); jobs may leave processes behind");
            }
            Inner::Subreaper
        }
    }
}

impl Containment {
    fn ready(inner: Inner) -> Containment {
        let cell = OnceLock::new();
        let _ = cell.set(inner);
        Containment {
            inner: Arc::new(cell),
        }
    }

    fn inner(&self) -> &Inner {
        self.inner.get_or_init(detect)
    }

    /// The containment for `mode`; `Auto` is [`Containment::detected`].
    ///
    /// # Errors
    ///
    /// `Cgroup` where no writable cgroup v2 subtree is found; `Subreaper`
    /// where `prctl` refuses.
    pub fn new(mode: ContainmentMode) -> io::Result<Containment> {
        match mode {
            ContainmentMode::Cgroup => Self::cgroup(),
            ContainmentMode::Subreaper => Self::subreaper(),
            ContainmentMode::Auto => Ok(Self::detected()),
        }
    }

    /// The process-wide containment chosen with `Auto`: a cgroup where one
    /// can be created, else the subreaper, decided on first use.
    pub fn detected() -> Containment {
        static DETECTED: OnceLock<Containment> = OnceLock::new();
        DETECTED
            .get_or_init(|| Containment {
                inner: Arc::new(OnceLock::new()),
            })
            .clone()
    }

    /// A cgroup v2 per job, below the agent's own cgroup.
    ///
    /// Where the memory controller is available and this process is alone
    /// in its cgroup (a systemd unit with `Delegate=yes`), the process moves
    /// itself into a leaf `hodei-agent-<pid>` so the controller can be
    /// enabled for the jobs' cgroups (cgroup v2 allows no processes in a
    /// cgroup that delegates controllers). Otherwise it stays where it is
    /// and jobs go without `memory.peak`.
    ///
    /// # Errors
    ///
    /// When cgroup v2 is not mounted, or the agent's cgroup is not
    /// writable (not delegated to it).
    pub fn cgroup() -> io::Result<Containment> {
        Ok(Self::ready(Inner::Cgroup(CgroupRoot::create()?)))
    }

    /// The agent process as child subreaper, with a sweep of `/proc`.
    ///
    /// # Errors
    ///
    /// When `prctl(PR_SET_CHILD_SUBREAPER)` fails.
    pub fn subreaper() -> io::Result<Containment> {
        become_subreaper()?;
        Ok(Self::ready(Inner::Subreaper))
    }

    /// Which mechanism this is, in words for the agent's start-up log.
    pub fn describe(&self) -> String {
        match self.inner() {
            Inner::Cgroup(r) => format!(
                "cgroup v2 per job under {} (memory.peak {})",
                r.parent.display(),
                if r.memory {
                    "reported"
                } else {
                    "unavailable: sampled"
                }
            ),
            Inner::Subreaper => "child subreaper with a /proc sweep".to_string(),
        }
    }

    /// The mode in use (never `Auto`).
    pub fn mode(&self) -> ContainmentMode {
        match self.inner() {
            Inner::Cgroup(_) => ContainmentMode::Cgroup,
            Inner::Subreaper => ContainmentMode::Subreaper,
        }
    }

    /// Prepares a cell for one attempt and arranges for `cmd`'s process
    /// to start inside it, with no descriptors but its standard ones.
    pub(crate) fn prepare(&self, cmd: &mut std::process::Command) -> io::Result<Cell> {
        let cgroup = match self.inner() {
            Inner::Cgroup(root) => Some(root.cell()?),
            Inner::Subreaper => None,
        };
        let procs = cgroup.as_ref().map(|c| c.procs.as_raw_fd());
        let subreaper = cgroup.is_none();
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (write, prctl, close_range, fcntl, getrlimit) and nothing is
        // allocated; the cgroup.procs descriptor stays open in the parent
        // until spawning is over.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = procs {
                    // "0" moves the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                close_inherited_descriptors();
                Ok(())
            });
        }
        Ok(Cell {
            cgroup,
            main: None,
            memory: matches!(self.inner(), Inner::Cgroup(r) if r.memory),
        })
    }
}

/// Marks every descriptor above standard error close-on-exec. Runs between
/// fork and exec: descriptors the agent inherited without close-on-exec,
/// and other jobs' terminals, must not reach the job. Close-on-exec rather
/// than closing keeps the spawner's own error pipe working until exec.
fn close_inherited_descriptors() {
    // SAFETY: plain system calls on descriptor numbers; no memory is
    // touched.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        // Kernels before 5.11: each descriptor up to the limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as i32
        } else {
            1024
        };
        for fd in 3..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

fn become_subreaper() -> io::Result<()> {
    if SUBREAPER.load(Ordering::Acquire) {
        return Ok(());
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SUBREAPER.store(true, Ordering::Release);
    Ok(())
}

impl CgroupRoot {
    fn create() -> io::Result<CgroupRoot> {
        let mount = cgroup2_mount()?;
        let own = own_cgroup()?;
        let base = mount.join(own.trim_start_matches('/'));
        remove_stale(&base);
        let parent = base.join(format!("hodei-jobs-{}", std::process::id()));
        match fs::create_dir(&parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        // Probe that a process can be placed below: cgroup.procs exists.
        if !parent.join("cgroup.procs").exists() {
            let _ = fs::remove_dir(&parent);
            return Err(io::Error::other(
                "cgroup.procs missing below the agent's cgroup",
            ));
        }
        let memory = enable_memory(&base, &parent);
        Ok(CgroupRoot { parent, memory })
    }

    fn cell(&self) -> io::Result<CgroupCell> {
        let n = CELL_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = self.parent.join(format!("job-{n}"));
        fs::create_dir(&dir)?;
        let procs = match fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
        {
            Ok(f) => OwnedFd::from(f),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(CgroupCell { dir, procs })
    }
}

/// The memory controller for job cells: it needs to be enabled in the
/// agent's cgroup, which only works once no process lives there, so the
/// agent first moves itself into a leaf of its own. Where other processes
/// share its cgroup, jobs go without it.
fn enable_memory(base: &Path, parent: &Path) -> bool {
    let available = fs::read_to_string(base.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"));
    if !available {
        return false;
    }
    let enable = |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), "+memory").is_ok();
    if !enable(base) {
        let others = fs::read_to_string(base.join("cgroup.procs")).map_or(true, |p| {
            p.split_whitespace()
                .any(|pid| pid != std::process::id().to_string())
        });
        if others {
            return false;
        }
        let leaf = base.join(format!("hodei-agent-{}", std::process::id()));
        if fs::create_dir(&leaf).is_err()
            || fs::write(leaf.join("cgroup.procs"), "0").is_err()
            || !enable(base)
        {
            return false;
        }
    }
    enable(parent)
}

/// Job cgroups left by an agent that died: their processes are killed and
/// the cgroups removed, since no one will collect those jobs' results.
fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hodei-jobs-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(cells) = fs::read_dir(e.path()) {
            for c in cells.flatten().filter(|c| c.path().is_dir()) {
                kill_cgroup(&c.path());
                wait_empty(&c.path(), Duration::from_secs(2));
                let _ = fs::remove_dir(c.path());
            }
        }
        let _ = fs::remove_dir(e.path());
    }
}

fn cgroup2_mount() -> io::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            // Fields: id parent dev root mountpoint opts... - fstype ...
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "cgroup v2 is not mounted"))
}

fn own_cgroup() -> io::Result<String> {
    let s = fs::read_to_string("/proc/self/cgroup")?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 entry for the agent"))
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn kill_cgroup(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    // Kernels before 5.14: one by one until none is left.
    for _ in 0..100 {
        let pids = cgroup_pids(dir);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            signal(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn populated(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(s) => s.lines().any(|l| l == "populated 1"),
        Err(_) => !cgroup_pids(dir).is_empty(),
    }
}

fn wait_empty(dir: &Path, bound: Duration) -> bool {
    let until = std::time::Instant::now() + bound;
    while populated(dir) {
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

fn signal(pid: u32, sig: i32) {
    if pid == 0 || pid > i32::MAX as u32 {
        return;
    }
    // SAFETY: kill only sends a signal.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

#[derive(Debug)]
struct CgroupCell {
    dir: PathBuf,
    /// Written "0" to between fork and exec; kept open until the attempt
    /// ends so the child always has it.
    procs: OwnedFd,
}

/// One attempt's containment: what its processes are and how to stop them.
#[derive(Debug)]
pub(crate) struct Cell {
    cgroup: Option<CgroupCell>,
    main: Option<u32>,
    memory: bool,
}

/// (ppid, pgid) of every process, from `/proc`.
fn process_table() -> HashMap<u32, (u32, u32)> {
    let mut table = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return table;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields resume
        // after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (_state, ppid, pgid) = (f.next(), f.next(), f.next());
        if let (Some(ppid), Some(pgid)) = (
            ppid.and_then(|p| p.parse().ok()),
            pgid.and_then(|p| p.parse().ok()),
        ) {
            table.insert(pid, (ppid, pgid));
        }
    }
    table
}

/// `root` and every descendant of it, plus members of its process group.
fn tree(table: &HashMap<u32, (u32, u32)>, root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &(ppid, _)) in table {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        if table.contains_key(&p) {
            out.push(p);
        }
        stack.extend(children.get(&p).into_iter().flatten().copied());
    }
    for (&pid, &(_, pgid)) in table {
        if pgid == root && seen.insert(pid) {
            out.push(pid);
        }
    }
    out
}

/// Kills and reaps every child of this process that is not a running job's
/// main process: in subreaper mode these are what jobs left behind.
/// Repeats until none is found, a bounded number of times, since a dying
/// stray may still be forking.
fn sweep_strays() {
    if !SUBREAPER.load(Ordering::Acquire) {
        return;
    }
    let me = std::process::id();
    for _ in 0..200 {
        let strays: Vec<u32> = {
            let live = live_mains().lock();
            let table = process_table();
            table
                .iter()
                .filter(|&(pid, &(ppid, _))| ppid == me && !live.contains(pid))
                .map(|(&pid, _)| pid)
                .collect()
        };
        if strays.is_empty() {
            return;
        }
        for &p in &strays {
            signal(p, libc::SIGKILL);
        }
        for &p in &strays {
            // Reap only these pids: the runtime reaps its own children.
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with a valid out pointer.
            unsafe {
                libc::waitpid(p as libc::pid_t, &mut status, libc::WNOHANG);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    tracing::warn!("processes left by a job are still forking after 200 sweeps");
}

impl Cell {
    /// Spawns `cmd`, registering its main process so the sweep spares it.
    pub(crate) fn spawn(
        &mut self,
        cmd: &mut tokio::process::Command,
    ) -> io::Result<tokio::process::Child> {
        let mut live = live_mains().lock();
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            live.insert(pid);
            self.main = Some(pid);
        }
        Ok(child)
    }

    /// Every process of the job now (main process included while it lives).
    fn members(&self) -> Vec<u32> {
        match (&self.cgroup, self.main) {
            (Some(c), _) => cgroup_pids(&c.dir),
            (None, Some(main)) => tree(&process_table(), main),
            (None, None) => Vec::new(),
        }
    }

    /// Sends `sig` to every process of the job, whatever group or session
    /// it moved to.
    pub(crate) fn signal_all(&self, sig: i32) {
        if let Some(main) = self.main {
            // SAFETY: killpg only sends a signal; a stale group fails.
            unsafe {
                libc::killpg(main as libc::pid_t, sig);
            }
        }
        for p in self.members() {
            signal(p, sig);
        }
    }

    /// Kills every process of the job and waits (bounded) until none is
    /// left; call once the main process has been reaped. Blocking: call
    /// from a blocking-capable context.
    pub(crate) fn kill_all(&self) {
        if let Some(c) = &self.cgroup {
            kill_cgroup(&c.dir);
            if !wait_empty(&c.dir, Duration::from_secs(5)) {
                tracing::warn!(cgroup = %c.dir.display(), "job processes outlived cgroup.kill for 5 s");
            }
        }
        // Subreaper mode: once the main process has exited, everything it
        // left was re-parented to this process and is a stray.
        sweep_strays();
    }

    /// True where [`peak_memory_mb`](Cell::peak_memory_mb) will answer:
    /// sampling the main process is then wasted work.
    pub(crate) fn reports_memory(&self) -> bool {
        self.memory && self.cgroup.is_some()
    }

    /// The job's peak memory from its cgroup, MiB, where the memory
    /// controller is on.
    pub(crate) fn peak_memory_mb(&self) -> Option<u64> {
        let c = self.cgroup.as_ref().filter(|_| self.memory)?;
        let s = fs::read_to_string(c.dir.join("memory.peak")).ok()?;
        Some(s.trim().parse::<u64>().ok()? / (1024 * 1024))
    }

    /// Called once the main process has been reaped.
    pub(crate) fn main_exited(&mut self) {
        if let Some(pid) = self.main.take() {
            live_mains().lock().remove(&pid);
        }
    }
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.main_exited();
        if let Some(c) = self.cgroup.take() {
            if populated(&c.dir) {
                kill_cgroup(&c.dir);
                wait_empty(&c.dir, Duration::from_secs(2));
            }
            if let Err(e) = fs::remove_dir(&c.dir) {
                tracing::warn!(cgroup = %c.dir.display(), "cannot remove a job's cgroup: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_table_sees_this_process_and_its_parent() {
        let me = std::process::id();
        let parent = process_table().get(&me).map(|&(ppid, _)| ppid);
        let parent = parent.expect("this process is in /proc");
        // SAFETY: getppid has no preconditions.
        assert_eq!(parent as i32, unsafe { libc::getppid() });
    }

    #[test]
    fn modes_parse_and_unknown_ones_are_named() {
        assert_eq!("cgroup".parse(), Ok(ContainmentMode::Cgroup));
        assert_eq!("subreaper".parse(), Ok(ContainmentMode::Subreaper));
        assert_eq!("auto".parse(), Ok(ContainmentMode::Auto));
        let e = "jail".parse::<ContainmentMode>().unwrap_err();
        assert!(e.contains("jail"), "{e}");
    }
}
