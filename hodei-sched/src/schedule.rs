//! [`ScheduleSpec`]: a job template run on a cron schedule, and [`Cron`],
//! which says when its ticks fall.
//!
//! No I/O and no clock of its own: the host asks which ticks fell between
//! the last one it ran and now ([`Cron::due`]), and when the next falls.

use std::str::FromStr;

use chrono::{DateTime, TimeZone as _, Utc};
use hodei_core::{FieldError, JobSpec, SpecErrors, TenantId, Timestamp};
use serde::{Deserialize, Serialize};

/// Most missed ticks one schedule may catch up after downtime.
pub const MAX_CATCH_UP: u32 = 1000;

/// How late a tick may run and still count as on time rather than missed.
pub const ON_TIME_MS: u64 = 2_000;

/// What a tick does when the schedule's previous run has not ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start another run anyway.
    #[default]
    Allow,
    /// Skip this tick.
    Skip,
    /// Cancel the runs not ended, then start this one.
    CancelPrevious,
}

impl Overlap {
    /// The name used in specs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::CancelPrevious => "cancel_previous",
        }
    }
}

fn utc() -> String {
    "UTC".into()
}

fn one() -> u32 {
    1
}

/// A periodic job: a cron schedule in a time zone and the job each tick
/// runs.
///
/// Deserialises from JSON or TOML; call [`ScheduleSpec::validate`] before
/// accepting one.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A short human name (not unique).
    #[serde(default)]
    pub name: String,
    /// The tenant that owns the schedule and its runs.
    #[serde(default)]
    pub tenant: TenantId,
    /// Five fields (minute hour day-of-month month day-of-week) or six
    /// (seconds first), with ranges, steps, names, `L`, `W` and `#`.
    pub cron: String,
    /// An IANA time zone (`Europe/Madrid`); `UTC` by default.
    #[serde(default = "utc")]
    pub timezone: String,
    /// What a tick does while an earlier run has not ended.
    #[serde(default)]
    pub overlap: Overlap,
    /// After downtime, how many of the ticks missed run (the latest
    /// ones); 0 runs none of them.
    #[serde(default = "one")]
    pub catch_up: u32,
    /// Created paused: no tick runs until resumed.
    #[serde(default)]
    pub paused: bool,
    /// The job each tick runs (its tenant is the schedule's; no
    /// idempotency key: each run's is set from its tick).
    pub job: JobSpec,
}

/// A parsed cron expression in a time zone.
#[derive(Clone, Debug)]
pub struct Cron {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Cron {
    /// Parses `expr` (five fields, or six with seconds first) for time
    /// zone `tz`.
    ///
    /// # Errors
    ///
    /// What is wrong, as `(field, message)`: `cron` or `timezone`.
    pub fn parse(expr: &str, tz: &str) -> Result<Cron, (&'static str, String)> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ("cron", format!("{expr:?}: {e}")))?;
        let tz = chrono_tz::Tz::from_str(tz)
            .map_err(|_| ("timezone", format!("{tz:?} is not an IANA time zone")))?;
        // A pattern that never matches (30 February) is refused here, not
        // discovered at run time.
        let probe = Cron { cron, tz };
        if probe.next_after(Timestamp(0)).is_none() {
            return Err(("cron", format!("{expr:?} never matches")));
        }
        Ok(probe)
    }

    fn at(&self, t: Timestamp) -> Option<DateTime<chrono_tz::Tz>> {
        let utc = DateTime::<Utc>::from_timestamp_millis(i64::try_from(t.0).ok()?)?;
        Some(utc.with_timezone(&self.tz))
    }

    fn ms(t: &DateTime<chrono_tz::Tz>) -> Option<Timestamp> {
        u64::try_from(t.timestamp_millis()).ok().map(Timestamp)
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = self.at(t)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Self::ms(&next)
    }

    /// The last tick at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let start = self.at(t)?;
        let prev = self.cron.find_previous_occurrence(&start, true).ok()?;
        Self::ms(&prev)
    }

    /// The next `n` ticks after `t`.
    pub fn upcoming(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at) {
                Some(next) => {
                    out.push(next);
                    at = next;
                }
                None => break,
            }
        }
        out
    }

    /// The ticks to run now, oldest first, and how many were left out.
    ///
    /// Of the ticks after `last` (exclusive) and at or before `now`, the
    /// newest runs if it is on time (at most [`ON_TIME_MS`] late); the
    /// others were missed (the host was down or behind), and only the
    /// latest `catch_up` of them run. Found by walking back from `now`,
    /// so a long downtime costs `catch_up` steps, not one per tick missed
    /// (the count of those left out stops at 10,000).
    pub fn due(&self, last: Timestamp, now: Timestamp, catch_up: u32) -> (Vec<Timestamp>, u64) {
        let wanted = catch_up as usize + 1;
        let mut newest_first = Vec::with_capacity(wanted);
        let mut at = now;
        let mut more = true;
        while newest_first.len() < wanted {
            match self.last_at_or_before(at) {
                Some(t) if t > last => {
                    newest_first.push(t);
                    if t.0 == 0 {
                        more = false;
                        break;
                    }
                    at = Timestamp(t.0 - 1);
                }
                _ => {
                    more = false;
                    break;
                }
            }
        }
        let mut ticks = newest_first.into_iter().peekable();
        let mut due = Vec::new();
        if ticks.peek().is_some_and(|t| t.0 + ON_TIME_MS >= now.0) {
            due.extend(ticks.next());
        }
        due.extend(ticks.by_ref().take(catch_up as usize));
        let mut skipped = ticks.count() as u64;
        while more && skipped < 10_000 {
            match self.last_at_or_before(at) {
                Some(t) if t > last => {
                    skipped += 1;
                    if t.0 == 0 {
                        break;
                    }
                    at = Timestamp(t.0 - 1);
                }
                _ => break,
            }
        }
        due.reverse();
        (due, skipped)
    }

    /// The time zone.
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// A human reading of the pattern.
    pub fn describe(&self) -> String {
        self.cron.describe()
    }

    /// Whether the tick `t` falls on the pattern (for checks).
    pub fn matches(&self, t: Timestamp) -> bool {
        self.at(t)
            .and_then(|d| self.cron.is_time_matching(&d).ok())
            .unwrap_or(false)
    }
}

impl ScheduleSpec {
    /// Checks the schedule and returns its cron: every problem found, each
    /// naming its field (the job's as `job.<field>`).
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] with every problem found.
    pub fn validate(&self) -> Result<Cron, SpecErrors> {
        let mut errs = Vec::new();
        let mut add = |field: &str, message: String| {
            errs.push(FieldError {
                field: field.to_string(),
                message,
            })
        };
        if self.name.len() > 256 || self.name.chars().any(char::is_control) {
            add(
                "name",
                "must be at most 256 bytes with no control characters".into(),
            );
        }
        let cron = match Cron::parse(&self.cron, &self.timezone) {
            Ok(c) => Some(c),
            Err((field, why)) => {
                add(field, why);
                None
            }
        };
        if self.catch_up > MAX_CATCH_UP {
            add(
                "catch_up",
                format!("must be 0 to {MAX_CATCH_UP}, got {}", self.catch_up),
            );
        }
        if self.job.idempotency_key.is_some() {
            add(
                "job.idempotency_key",
                "set by the schedule for each run".into(),
            );
        }
        if self.job.tenant != TenantId::default() && self.job.tenant != self.tenant {
            add(
                "job.tenant",
                format!(
                    "must be the schedule's tenant {} (or unset), got {}",
                    self.tenant, self.job.tenant
                ),
            );
        }
        if let Err(e) = self.job.validate() {
            for fe in e.0 {
                add(&format!("job.{}", fe.field), fe.message);
            }
        }
        match cron {
            Some(c) if errs.is_empty() => Ok(c),
            _ => Err(SpecErrors(errs)),
        }
    }
}

/// When `t` is, in UTC, for people.
pub fn rfc3339(t: Timestamp) -> String {
    i64::try_from(t.0)
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .map(|d| d.to_rfc3339())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Timestamp {
        Timestamp(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis() as u64)
    }

    #[test]
    fn seconds_are_optional_and_time_zones_count() {
        let every_second = Cron::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.next_after(ms("2026-01-01T00:00:00.500Z")),
            Some(ms("2026-01-01T00:00:01Z"))
        );
        // 09:00 in Madrid is 08:00 UTC in winter, 07:00 in summer.
        let nine = Cron::parse("0 9 * * *", "Europe/Madrid").unwrap();
        assert_eq!(
            nine.next_after(ms("2026-01-10T12:00:00Z")),
            Some(ms("2026-01-11T08:00:00Z"))
        );
        assert_eq!(
            nine.next_after(ms("2026-07-10T12:00:00Z")),
            Some(ms("2026-07-11T07:00:00Z"))
        );
        assert_eq!(nine.upcoming(ms("2026-01-10T12:00:00Z"), 3).len(), 3);
    }

    #[test]
    fn bad_patterns_and_zones_are_named() {
        assert_eq!(Cron::parse("61 * * * *", "UTC").unwrap_err().0, "cron");
        assert_eq!(Cron::parse("* * *", "UTC").unwrap_err().0, "cron");
        assert_eq!(Cron::parse("0 0 30 2 *", "UTC").unwrap_err().0, "cron");
        assert_eq!(
            Cron::parse("* * * * *", "Mars/Olympus").unwrap_err().0,
            "timezone"
        );
    }

    #[test]
    fn downtime_catches_up_only_the_latest_ticks() {
        let c = Cron::parse("0 * * * * *", "UTC").unwrap();
        let last = ms("2026-01-01T00:00:00Z");
        // Ten minutes down: one catch-up runs the latest tick only.
        let (due, skipped) = c.due(last, ms("2026-01-01T00:10:30Z"), 1);
        assert_eq!(due, vec![ms("2026-01-01T00:10:00Z")]);
        assert_eq!(skipped, 9);
        let (due, _) = c.due(last, ms("2026-01-01T00:10:30Z"), 3);
        assert_eq!(
            due,
            vec![
                ms("2026-01-01T00:08:00Z"),
                ms("2026-01-01T00:09:00Z"),
                ms("2026-01-01T00:10:00Z")
            ]
        );
        // Nothing fell since the last: nothing is due.
        assert!(c.due(last, ms("2026-01-01T00:00:59Z"), 1).0.is_empty());
        // On time: the tick runs whatever the catch-up.
        assert_eq!(
            c.due(last, ms("2026-01-01T00:01:00.200Z"), 0).0,
            vec![ms("2026-01-01T00:01:00Z")]
        );
        // Missed with catch-up 0: none.
        assert!(c.due(last, ms("2026-01-01T00:05:30Z"), 0).0.is_empty());
        // A year of a per-second schedule down costs little: the tick on
        // time and two caught up.
        let s = Cron::parse("* * * * * *", "UTC").unwrap();
        let (due, skipped) = s.due(last, ms("2027-01-01T00:00:00Z"), 2);
        assert_eq!(due.len(), 3);
        assert_eq!(skipped, 10_000);
    }

    #[test]
    fn a_schedule_names_each_problem() {
        let s: ScheduleSpec = toml::from_str(
            r#"
            cron = "*/5 * * * * *"
            timezone = "Nowhere"
            catch_up = 5000
            [job]
            command = { script = "true" }
            priority = 9
            idempotency_key = "x"
            "#,
        )
        .unwrap();
        let e = s.validate().unwrap_err();
        for f in [
            "timezone",
            "catch_up",
            "job.priority",
            "job.idempotency_key",
        ] {
            assert!(e.concerns(f), "{f} not named in {e}");
        }
        let ok: ScheduleSpec = toml::from_str(
            r#"
            cron = "0 9 * * MON-FRI"
            [job]
            command = { argv = ["true"] }
            "#,
        )
        .unwrap();
        assert_eq!(ok.timezone, "UTC");
        assert_eq!(ok.catch_up, 1);
        assert_eq!(ok.overlap, Overlap::Allow);
        assert!(ok.validate().is_ok());
    }
}
