//! Schedules: when a workflow runs by itself. A workflow declares them under `schedule:` (one
//! mapping or a list); `flow schedule` runs them, `flow cron print` turns them into crontab lines.
//!
//! A schedule is a cron expression read in an IANA time zone. Times are computed by croner on
//! jiff's zoned date-times, so daylight-saving changes behave as a person expects: a daily 02:30
//! job runs once on the day the clocks skip 02:00–03:00 (right after the gap, at 03:00) and
//! once on the day they repeat 02:00–03:00 (at the first 02:30).

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use schemars::JsonSchema;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::fmt;

use crate::diagnostic::{Diagnostic, Span, did_you_mean};
use crate::workflow::params::{check_override, parse_override, plain_value};
use crate::workflow::yaml::{SpannedMap, Yaml};

/// What to do when a scheduled time comes while the previous run of the same schedule still runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start; the time is skipped (Argo's `Forbid`). The default: two training runs of one
    /// workflow would only compete for the same GPU.
    #[default]
    Skip,
    /// Start when the running one has finished, one queued run per missed time (Prefect's enqueue).
    Queue,
    /// Start at once, next to the running one (Argo's `Allow`).
    Allow,
    /// Cancel the running one, then start (Argo's `Replace`).
    Replace,
}

/// What to do at start-up about times that passed while no scheduler was running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed times are skipped; the next run is at the next time (the default).
    #[default]
    #[serde(rename = "none")]
    Skip,
    /// One run at once for the latest missed time, however many were missed.
    Latest,
}

/// One `schedule:` entry as written in the workflow file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// A cron expression: five fields `minute hour day-of-month month day-of-week` (`0 3 * * 1`:
    /// Mondays at 03:00), six with seconds first, or `@hourly`, `@daily`, `@weekly`, `@monthly`,
    /// `@yearly`. Names (`mon`, `jan`) and croner's `L`, `#` and `W` are understood.
    #[schemars(with = "String")]
    pub cron: Spanned<String>,
    /// The IANA time zone the expression is read in (`Europe/Berlin`). Default `UTC`: flow never
    /// guesses the machine's zone, so a workflow means the same everywhere.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timezone: Option<Spanned<String>>,
    /// When the previous run still runs: `skip` (default), `queue`, `allow` or `replace`.
    #[serde(default)]
    #[schemars(with = "Option<Overlap>")]
    pub overlap: Option<Spanned<Overlap>>,
    /// Times missed while no scheduler ran: `none` (default, skip them) or `latest` (run once).
    #[serde(default)]
    #[schemars(with = "Option<CatchUp>")]
    pub catch_up: Option<Spanned<CatchUp>>,
    /// Workflow params for the scheduled runs, as `--set` would give them.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, serde_json::Value>")]
    pub params: SpannedMap<Yaml>,
}

/// `schedule:` as written: one mapping or a list of them.
#[derive(Debug, Default)]
pub struct ScheduleList {
    /// The entries in file order.
    pub entries: Vec<ScheduleSpec>,
    /// Whether the file wrote a list (diagnostics then name `schedule[1].cron`).
    pub is_list: bool,
}

/// The JSON Schema of `schedule:`: one entry or a list.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum ScheduleListSchema {
    /// One schedule.
    One(Box<ScheduleSpec>),
    /// Several schedules.
    Many(Vec<ScheduleSpec>),
}

impl<'de> Deserialize<'de> for ScheduleList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ScheduleList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a schedule (a mapping with `cron`) or a list of schedules")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ScheduleList, A::Error> {
                let entry =
                    ScheduleSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ScheduleList {
                    entries: vec![entry],
                    is_list: false,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ScheduleList, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element::<ScheduleSpec>()? {
                    entries.push(entry);
                }
                Ok(ScheduleList {
                    entries,
                    is_list: true,
                })
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

/// A checked schedule, ready to compute times.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Position in the workflow's `schedule:` list (0 for a single mapping).
    pub index: usize,
    /// The cron expression as written.
    pub expression: String,
    /// The parsed expression.
    pub cron: Cron,
    /// The time zone's IANA name.
    pub timezone_name: String,
    /// The time zone.
    pub timezone: TimeZone,
    /// The overlap policy.
    pub overlap: Overlap,
    /// The missed-run policy.
    pub catch_up: CatchUp,
    /// Param overrides for the scheduled runs.
    pub params: BTreeMap<String, Json>,
}

impl Schedule {
    /// The first scheduled time strictly after `after` (`None` when the expression never
    /// matches again).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let zoned = after.to_zoned(self.timezone.clone());
        self.cron
            .find_next_occurrence(&zoned, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The latest scheduled time at or before `until`.
    pub fn latest_at_or_before(&self, until: Timestamp) -> Option<Timestamp> {
        let zoned = until.to_zoned(self.timezone.clone());
        self.cron
            .find_previous_occurrence(&zoned, true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// `time` on the schedule's wall clock, as RFC 3339 with offset and zone
    /// (`2026-11-30T03:00:00+01:00[Europe/Berlin]`).
    pub fn local_time(&self, time: Timestamp) -> Zoned {
        time.to_zoned(self.timezone.clone())
    }

    /// `0 3 * * 1 (Europe/Berlin)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.expression, self.timezone_name)
    }

    /// The params as `--set` texts: `NAME=VALUE`, the value as plain text where `--set` reads it
    /// back as the same string, else as JSON (which `--set` reads as YAML).
    pub fn overrides(&self) -> Vec<String> {
        self.params
            .iter()
            .map(|(name, value)| {
                let plain = value.as_str().map(|text| format!("{name}={text}"));
                match plain {
                    Some(text) if parse_override(&text).is_ok_and(|(_, v)| &v == value) => text,
                    _ => format!("{name}={value}"),
                }
            })
            .collect()
    }
}

/// Parses a cron expression the way every schedule does: five fields, or six with seconds.
/// An error names the field at fault and its range where it can.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let parser = CronParser::builder().seconds(Seconds::Optional).build();
    parser.parse(expression).map_err(|e| {
        let cause = e.to_string();
        let cause = cause
            .trim_end_matches('.')
            .trim_start_matches("Component error: ");
        match field_at_fault(&parser, expression) {
            Some((name, text, range)) => format!("{name} `{text}`: {cause} (expected {range})"),
            None => cause.to_string(),
        }
    })
}

/// The first field that fails on its own (every other field `*`): name, text and range.
fn field_at_fault<'a>(
    parser: &CronParser,
    expression: &'a str,
) -> Option<(&'static str, &'a str, &'static str)> {
    const FIELDS: [(&str, &str); 6] = [
        ("second", "0-59"),
        ("minute", "0-59"),
        ("hour", "0-23"),
        ("day-of-month", "1-31, L or W"),
        ("month", "1-12 or jan-dec"),
        ("day-of-week", "0-7 or sun-sat, L or #"),
    ];
    let fields: Vec<&str> = expression.split_whitespace().collect();
    let named = match fields.len() {
        5 => &FIELDS[1..],
        6 => &FIELDS[..],
        _ => return None,
    };
    (0..fields.len()).find_map(|i| {
        let alone: Vec<&str> = (0..fields.len())
            .map(|j| if i == j { fields[j] } else { "*" })
            .collect();
        parser
            .parse(&alone.join(" "))
            .is_err()
            .then(|| (named[i].0, fields[i], named[i].1))
    })
}

/// The expression as system cron (Vixie cron, cronie) reads it, or why it cannot: system cron
/// has five fields (no seconds), numbers, `*`, `,`, `-`, `/`, month and weekday names, and the
/// `@hourly` … `@yearly` aliases, but none of croner's `L`, `W`, `#` or `?`.
pub fn system_cron_expression(expression: &str) -> Result<String, String> {
    const ALIASES: [&str; 7] = [
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
    ];
    const NAMES: [&str; 19] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "sun",
        "mon", "tue", "wed", "thu", "fri", "sat",
    ];
    let trimmed = expression.trim();
    if trimmed.starts_with('@') {
        return if ALIASES.contains(&trimmed.to_ascii_lowercase().as_str()) {
            Ok(trimmed.to_string())
        } else {
            Err(format!("system cron has no alias `{trimmed}`"))
        };
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "`{trimmed}` has {} fields; system cron has five (minute granularity, no seconds)",
            fields.len()
        ));
    }
    for field in &fields {
        if let Some(c) = field
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | ',' | '-' | '/')))
        {
            return Err(format!(
                "system cron does not understand `{c}` in `{field}`"
            ));
        }
        for word in field
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
        {
            if !NAMES.contains(&word.to_ascii_lowercase().as_str()) {
                return Err(format!(
                    "system cron does not understand `{word}` in `{field}`"
                ));
            }
        }
    }
    Ok(fields.join(" "))
}

/// Looks up an IANA time zone, with a suggestion when the name is close to a known one.
pub fn time_zone(name: &str) -> Result<TimeZone, (String, Option<String>)> {
    TimeZone::get(name).map_err(|_| {
        let names: Vec<String> = jiff::tz::db()
            .available()
            .map(|n| n.as_str().to_string())
            .collect();
        let hint = did_you_mean(name, names.iter().map(String::as_str));
        (
            format!(
                "unknown time zone `{name}`: expected an IANA name such as `Europe/Berlin` or `UTC`"
            ),
            hint,
        )
    })
}

/// Checks every entry of `schedule:` against the workflow's declared params; returns the
/// schedules that are valid and a diagnostic for every problem.
pub fn check_schedules(
    list: &ScheduleList,
    declared: &BTreeMap<String, Json>,
) -> (Vec<Schedule>, Vec<Diagnostic>) {
    let mut schedules = Vec::new();
    let mut errors = Vec::new();
    for (index, spec) in list.entries.iter().enumerate() {
        let field = if list.is_list {
            format!("schedule[{index}]")
        } else {
            "schedule".to_string()
        };
        match check_one(index, spec, &field, declared) {
            Ok(schedule) => schedules.push(schedule),
            Err(mut found) => errors.append(&mut found),
        }
    }
    (schedules, errors)
}

fn check_one(
    index: usize,
    spec: &ScheduleSpec,
    field: &str,
    declared: &BTreeMap<String, Json>,
) -> Result<Schedule, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let cron_span = Span::of(&spec.cron.referenced);
    let cron = parse_cron(&spec.cron.value).map_err(|message| {
        Diagnostic::at(
            cron_span,
            format!("{field}.cron"),
            format!(
                "invalid cron expression `{}`: {message}; expected five fields `minute hour day-of-month month day-of-week` (e.g. `0 3 * * 1`), six with seconds first, or @hourly/@daily/@weekly/@monthly/@yearly",
                spec.cron.value
            ),
        )
    });
    let (timezone_name, timezone) = match &spec.timezone {
        None => ("UTC".to_string(), Ok(TimeZone::UTC)),
        Some(name) => (
            name.value.clone(),
            time_zone(&name.value).map_err(|(message, hint)| {
                Diagnostic::at(
                    Span::of(&name.referenced),
                    format!("{field}.timezone"),
                    message,
                )
                .with_optional_hint(hint)
            }),
        ),
    };
    let (cron, timezone) = (
        cron.map_err(|d| errors.push(d)).ok(),
        timezone.map_err(|d| errors.push(d)).ok(),
    );
    let mut params = BTreeMap::new();
    for (key, value) in spec.params.iter() {
        let key_field = format!("{field}.params.{}", key.value);
        match plain_value(value, &key_field, "schedule params") {
            Ok(json) => match check_override(declared, &key.value, &json) {
                Ok(()) => {
                    params.insert(key.value.clone(), json);
                }
                Err((message, hint)) => {
                    errors.push(
                        Diagnostic::at(Span::of(&key.referenced), key_field, message)
                            .with_optional_hint(hint),
                    );
                }
            },
            Err(mut found) => errors.append(&mut found),
        }
    }
    let (Some(cron), Some(timezone)) = (cron, timezone) else {
        return Err(errors);
    };
    let schedule = Schedule {
        index,
        expression: spec.cron.value.clone(),
        cron,
        timezone_name,
        timezone,
        overlap: spec.overlap.as_ref().map(|o| o.value).unwrap_or_default(),
        catch_up: spec.catch_up.as_ref().map(|c| c.value).unwrap_or_default(),
        params,
    };
    if schedule.next_after(Timestamp::now()).is_none() {
        errors.push(Diagnostic::at(
            cron_span,
            format!("{field}.cron"),
            format!(
                "the cron expression `{}` never matches a future time",
                spec.cron.value
            ),
        ));
    }
    if errors.is_empty() {
        Ok(schedule)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, tz: &str) -> Schedule {
        Schedule {
            index: 0,
            expression: cron.into(),
            cron: parse_cron(cron).unwrap(),
            timezone_name: tz.into(),
            timezone: TimeZone::get(tz).unwrap(),
            overlap: Overlap::Skip,
            catch_up: CatchUp::Skip,
            params: BTreeMap::new(),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// The next `n` times after `from`, as local wall-clock text with offset.
    fn next_n(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                s.local_time(t).strftime("%F %T%:z").to_string()
            })
            .collect()
    }

    #[test]
    fn weekly_in_berlin_follows_the_local_offset() {
        let s = schedule("0 3 * * 1", "Europe/Berlin");
        assert_eq!(
            next_n(&s, "2026-10-20T00:00:00Z", 3),
            [
                "2026-10-26 03:00:00+01:00",
                "2026-11-02 03:00:00+01:00",
                "2026-11-09 03:00:00+01:00"
            ]
        );
        assert_eq!(
            next_n(&s, "2026-03-25T00:00:00Z", 2),
            ["2026-03-30 03:00:00+02:00", "2026-04-06 03:00:00+02:00"]
        );
    }

    #[test]
    fn a_time_inside_the_spring_forward_gap_runs_once_right_after_it() {
        // 2026-03-29: Berlin skips from 02:00 to 03:00.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            next_n(&s, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28 02:30:00+01:00",
                "2026-03-29 03:00:00+02:00",
                "2026-03-30 02:30:00+02:00"
            ]
        );
    }

    #[test]
    fn a_time_inside_the_fall_back_overlap_runs_once() {
        // 2026-10-25: Berlin repeats 02:00–03:00 (first +02:00, then +01:00).
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            next_n(&s, "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24 02:30:00+02:00",
                "2026-10-25 02:30:00+02:00",
                "2026-10-26 02:30:00+01:00"
            ]
        );
    }

    #[test]
    fn hourly_runs_every_real_hour_across_both_changes() {
        let s = schedule("0 * * * *", "Europe/Berlin");
        // Spring: 01:00+01 → 03:00+02 is one real hour.
        let spring = next_n(&s, "2026-03-28T23:30:00Z", 3);
        assert_eq!(
            spring,
            [
                "2026-03-29 01:00:00+01:00",
                "2026-03-29 03:00:00+02:00",
                "2026-03-29 04:00:00+02:00"
            ]
        );
        // Fall: 02:00 happens twice, each is a real hour apart.
        let fall = next_n(&s, "2026-10-24T23:30:00Z", 3);
        assert_eq!(
            fall,
            [
                "2026-10-25 02:00:00+02:00",
                "2026-10-25 02:00:00+01:00",
                "2026-10-25 03:00:00+01:00"
            ]
        );
    }

    #[test]
    fn latest_missed_time_is_found_backwards() {
        let s = schedule("0 3 * * 1", "Europe/Berlin");
        let latest = s.latest_at_or_before(at("2026-11-12T00:00:00Z")).unwrap();
        assert_eq!(
            s.local_time(latest).strftime("%F %T%:z").to_string(),
            "2026-11-09 03:00:00+01:00"
        );
        let exact = at("2026-11-09T02:00:00Z");
        assert_eq!(s.latest_at_or_before(exact), Some(exact));
    }

    #[test]
    fn seconds_and_aliases_parse() {
        assert!(parse_cron("*/2 * * * * *").is_ok());
        assert!(parse_cron("@weekly").is_ok());
        assert!(parse_cron("0 3 * * mon").is_ok());
        assert!(parse_cron("0 3 * *").is_err());
        let error = parse_cron("0 3 * * 8").unwrap_err();
        assert!(error.starts_with("day-of-week `8`: "), "{error}");
        assert!(
            error.ends_with("(expected 0-7 or sun-sat, L or #)"),
            "{error}"
        );
        assert!(
            parse_cron("61 * * * *")
                .unwrap_err()
                .starts_with("minute `61`")
        );
    }

    #[test]
    fn system_cron_takes_five_plain_fields_only() {
        assert_eq!(
            system_cron_expression(" 0 3  * * mon ").unwrap(),
            "0 3 * * mon"
        );
        assert_eq!(system_cron_expression("@weekly").unwrap(), "@weekly");
        assert_eq!(
            system_cron_expression("*/15 8-18 1,15 jan-jun 1-5").unwrap(),
            "*/15 8-18 1,15 jan-jun 1-5"
        );
        assert!(
            system_cron_expression("0 0 3 * * *")
                .unwrap_err()
                .contains("6 fields")
        );
        assert!(
            system_cron_expression("0 3 L * *")
                .unwrap_err()
                .contains("`L`")
        );
        assert!(
            system_cron_expression("0 3 * * 5#2")
                .unwrap_err()
                .contains("`#`")
        );
        assert!(system_cron_expression("@reboot").is_err());
    }

    #[test]
    fn unknown_time_zone_suggests_the_close_one() {
        let (message, hint) = time_zone("Europe/Berln").unwrap_err();
        assert!(
            message.contains("unknown time zone `Europe/Berln`"),
            "{message}"
        );
        assert!(hint.unwrap().contains("Europe/Berlin"));
    }
}
