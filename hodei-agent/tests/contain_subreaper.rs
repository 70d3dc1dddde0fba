//! Containment by the child subreaper and a sweep of /proc, the mode used
//! where no cgroup can be created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use hodei_agent::{Containment, ContainmentMode, ExecConfig};

fn config() -> ExecConfig {
    let c = Containment::new(ContainmentMode::Subreaper).unwrap();
    assert_eq!(c.mode(), ContainmentMode::Subreaper);
    common::config(c)
}

#[test]
fn setsid_descendant_holding_stdout() {
    common::a_setsid_descendant_holding_stdout(&config());
}

#[test]
fn double_forking_daemon() {
    common::a_double_forking_daemon(&config());
}

#[test]
fn cancel_reaches_every_session() {
    common::cancel_reaches_every_session(&config());
}

#[test]
fn timeout_reaches_every_session() {
    common::a_timeout_reaches_every_session(&config());
}

#[test]
fn one_jobs_cleanup_spares_another_job() {
    common::one_jobs_cleanup_spares_another_job(&config());
}
