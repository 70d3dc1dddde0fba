//! Containment by the child subreaper and a sweep of /proc, the mode used
//! where no cgroup can be created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod escape;

use hodei_agent::{Containment, ContainmentMode, ExecConfig};

fn config() -> ExecConfig {
    let c = Containment::new(ContainmentMode::Subreaper).unwrap();
    assert_eq!(c.mode(), ContainmentMode::Subreaper);
    escape::config(c)
}

#[test]
fn setsid_descendant_holding_stdout() {
    escape::a_setsid_descendant_holding_stdout(&config());
}

#[test]
fn double_forking_daemon() {
    escape::a_double_forking_daemon(&config());
}

#[test]
fn cancel_reaches_every_session() {
    escape::cancel_reaches_every_session(&config());
}

#[test]
fn timeout_reaches_every_session() {
    escape::a_timeout_reaches_every_session(&config());
}

#[test]
fn one_jobs_cleanup_spares_another_job() {
    escape::one_jobs_cleanup_spares_another_job(&config());
}
