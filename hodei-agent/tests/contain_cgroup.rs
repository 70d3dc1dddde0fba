//! Containment by a cgroup v2 per job, where this machine lets the test
//! create one (a delegated or writable cgroup v2 subtree).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use hodei_agent::{Containment, ContainmentMode, ExecConfig};

fn config() -> Option<ExecConfig> {
    match Containment::new(ContainmentMode::Cgroup) {
        Ok(c) => {
            assert_eq!(c.mode(), ContainmentMode::Cgroup);
            Some(common::config(c))
        }
        Err(e) => {
            // Not every machine delegates a cgroup: say so, loudly.
            eprintln!("SKIPPED: no writable cgroup v2 subtree here ({e})");
            None
        }
    }
}

#[test]
fn setsid_descendant_holding_stdout() {
    if let Some(c) = config() {
        common::a_setsid_descendant_holding_stdout(&c);
    }
}

#[test]
fn double_forking_daemon() {
    if let Some(c) = config() {
        common::a_double_forking_daemon(&c);
    }
}

#[test]
fn cancel_reaches_every_session() {
    if let Some(c) = config() {
        common::cancel_reaches_every_session(&c);
    }
}

#[test]
fn timeout_reaches_every_session() {
    if let Some(c) = config() {
        common::a_timeout_reaches_every_session(&c);
    }
}

#[test]
fn one_jobs_cleanup_spares_another_job() {
    if let Some(c) = config() {
        common::one_jobs_cleanup_spares_another_job(&c);
    }
}

#[test]
fn the_job_cgroup_is_removed_after_the_job() {
    let Some(c) = config() else { return };
    let spec =
        hodei_core::JobSpec::script("echo \"cg $(cut -d: -f3 /proc/self/cgroup | tail -n1)\"");
    let (f, out, _) = common::exec(&c, spec, None);
    assert_eq!(f.exit, hodei_core::ExitStatus::Code(0));
    let text = common::stdout(&out);
    let cg = text
        .lines()
        .find_map(|l| l.strip_prefix("cg "))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        cg.contains("hodei-jobs-") && cg.contains("/job-"),
        "ran in {cg:?}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = info
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split_whitespace().nth(4).unwrap().to_string())
        })
        .unwrap();
    assert!(
        !std::path::Path::new(&format!("{mount}{cg}")).exists(),
        "{cg} left behind"
    );
}
