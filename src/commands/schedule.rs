//! `flow schedule` (the long-running scheduler, or `--list`) and `flow cron print`.

use flow_engine::scheduler::{
    EventSink, ScheduledFile, Scheduler, SchedulerConfig, Shutdown, SystemClock, load_scheduled,
    workflow_files,
};
use flow_engine::store::Store;
use flow_engine::workflow::schedule::{CatchUp, Overlap, Schedule, system_cron_expression};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Failure, cancel_on_signals, load_workflow, print_json, print_table};
use crate::cli::ScheduleArgs;

/// Where `flow schedule` looks when given nothing.
const DEFAULT_SOURCE: &str = "workflows";

/// `flow schedule`.
pub fn schedule(args: ScheduleArgs, store: &Store) -> Result<(), Failure> {
    let sources = if args.sources.is_empty() {
        vec![PathBuf::from(DEFAULT_SOURCE)]
    } else {
        args.sources.clone()
    };
    let executor = super::run::parse_executor(args.executor.as_deref())?;
    let remote = super::run::parse_remote(args.remote.as_deref())?;
    let files = scheduled_files(&sources)?;
    if args.list {
        list(&files, args.count, args.json);
        return Ok(());
    }
    store.create()?;
    let config = SchedulerConfig {
        sources,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        reload_every: args.reload_every,
        grace: args.grace,
        executor,
        remote,
    };
    let events: EventSink = Arc::new(|event| {
        let now = jiff::Timestamp::now().strftime("%F %T UTC");
        eprintln!("[{now}] {event}");
    });
    let runtime = super::runtime()?;
    let scheduler = Scheduler::new(
        Arc::new(flow_nodes::library()),
        store.clone(),
        Arc::new(SystemClock),
        config,
        events,
    );
    runtime.block_on(async {
        let shutdown = Shutdown::default();
        // SIGTERM / Ctrl-C stops the scheduler (runs get the grace period); a second one
        // cancels the running runs at once.
        cancel_on_signals(vec![shutdown.stop.clone(), shutdown.abort.clone()], || {});
        scheduler.run(shutdown).await
    })?;
    Ok(())
}

/// Loads every workflow under `sources`; fails on the first invalid one (before anything is
/// scheduled) and when none has a schedule.
fn scheduled_files(sources: &[PathBuf]) -> Result<Vec<ScheduledFile>, Failure> {
    let paths = workflow_files(sources).map_err(|e| Failure::Input(format!("error: {e}")))?;
    let registry = flow_nodes::library();
    let mut files = Vec::new();
    let mut errors = String::new();
    for path in &paths {
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| format!("error: cannot read {}: {e}", path.display()))
            .and_then(|text| load_scheduled(path, text, &registry));
        match loaded {
            Ok(Some(file)) => files.push(file),
            Ok(None) => {}
            Err(error) => errors.push_str(&error),
        }
    }
    if !errors.is_empty() {
        return Err(Failure::Input(errors));
    }
    if files.is_empty() {
        let names: Vec<String> = sources.iter().map(|s| s.display().to_string()).collect();
        return Err(Failure::Input(format!(
            "error: no workflow in {} has a `schedule:` (e.g. `schedule: {{cron: \"0 3 * * 1\", timezone: Europe/Berlin}}`)",
            names.join(", ")
        )));
    }
    Ok(files)
}

/// `flow schedule --list`: each schedule's next `count` times on its own clock.
fn list(files: &[ScheduledFile], count: usize, json: bool) {
    let now = jiff::Timestamp::now();
    let mut rows = vec![vec![
        "SCHEDULE".to_string(),
        "CRON".into(),
        "TIMEZONE".into(),
        "OVERLAP".into(),
        "CATCH_UP".into(),
        "NEXT".into(),
    ]];
    let mut listed = Vec::new();
    for file in files {
        for schedule in &file.workflow.schedules {
            let times = next_times(schedule, now, count);
            rows.push(vec![
                file.label(schedule),
                schedule.expression.clone(),
                schedule.timezone_name.clone(),
                flow_engine::variant_name(&schedule.overlap),
                flow_engine::variant_name(&schedule.catch_up),
                times
                    .iter()
                    .map(|t| t.strftime("%F %T %:z").to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
            listed.push(serde_json::json!({
                "file": file.path,
                "workflow": file.workflow.name,
                "schedule": file.label(schedule),
                "index": schedule.index,
                "cron": schedule.expression,
                "timezone": schedule.timezone_name,
                "overlap": schedule.overlap,
                "catch_up": schedule.catch_up,
                "params": schedule.params,
                "next": times.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }));
        }
    }
    if json {
        print_json(&listed);
    } else {
        print_table(&rows);
    }
}

fn next_times(schedule: &Schedule, from: jiff::Timestamp, count: usize) -> Vec<jiff::Zoned> {
    std::iter::successors(schedule.next_after(from), |t| schedule.next_after(*t))
        .take(count)
        .map(|t| schedule.local_time(t))
        .collect()
}

/// `flow cron print FILE`: one crontab entry per schedule.
pub fn cron_print(file: &Path, store: &Store) -> Result<(), Failure> {
    let workflow = load_workflow(file, &[])?;
    if workflow.schedules.is_empty() {
        return Err(Failure::Input(format!(
            "error: {} has no `schedule:`; nothing to print",
            file.display()
        )));
    }
    let places = CronPlaces::resolve(file, store)?;
    let total = workflow.schedules.len();
    let mut text = String::new();
    for schedule in &workflow.schedules {
        text.push_str(&crontab_entry(&workflow.name, schedule, total, &places)?);
    }
    print!("{text}");
    Ok(())
}

/// Absolute paths a crontab line needs (cron runs in the user's home with a minimal PATH).
struct CronPlaces {
    flow: PathBuf,
    file: PathBuf,
    store: PathBuf,
    workdir: PathBuf,
}

impl CronPlaces {
    fn resolve(file: &Path, store: &Store) -> Result<CronPlaces, Failure> {
        let absolute = |p: &Path| {
            std::path::absolute(p).map_err(|e| {
                Failure::Input(format!("error: cannot make {} absolute: {e}", p.display()))
            })
        };
        let flow = std::env::current_exe()
            .map_err(|e| Failure::Run(format!("error: cannot find flow's own path: {e}")))?;
        Ok(CronPlaces {
            flow,
            file: absolute(file)?,
            store: absolute(store.root())?,
            workdir: absolute(Path::new("."))?,
        })
    }
}

/// The comment, `CRON_TZ` line and command line of one schedule.
fn crontab_entry(
    workflow: &str,
    schedule: &Schedule,
    total: usize,
    places: &CronPlaces,
) -> Result<String, Failure> {
    let label = format!("schedule {} of {total}", schedule.index + 1);
    let fields = system_cron_expression(&schedule.expression).map_err(|why| {
        Failure::Input(format!(
            "error: {label} (`{}`) cannot be a crontab line: {why}; run it with `flow schedule` instead",
            schedule.expression
        ))
    })?;
    let lock = places.store.join("cron").join(format!("{workflow}.lock"));
    let log = places.store.join("cron").join(format!("{workflow}.log"));
    let (guard, overlap_note) = match schedule.overlap {
        Overlap::Skip => (
            format!("flock -n {} ", shell_quote(&lock)),
            "overlap skip: `flock -n` skips a time while the last run still holds the lock",
        ),
        Overlap::Queue => (
            format!("flock {} ", shell_quote(&lock)),
            "overlap queue: `flock` waits for the last run to finish",
        ),
        Overlap::Allow => (
            String::new(),
            "overlap allow: no lock; flow's store still runs one process at a time, so a second invocation waits for the store",
        ),
        Overlap::Replace => {
            return Err(Failure::Input(format!(
                "error: {label} has `overlap: replace`, which a crontab line cannot do (it would have to cancel the running run); run it with `flow schedule` instead"
            )));
        }
    };
    let mut comment = format!(
        "# flow: workflow `{workflow}` ({}), {label}: `{}` in {}; {overlap_note}.\n",
        places.file.display(),
        schedule.expression,
        schedule.timezone_name
    );
    if schedule.catch_up == CatchUp::Latest {
        eprintln!(
            "warning: {label} has `catch_up: latest`; system cron never runs missed times (use `flow schedule`, or anacron)"
        );
        comment.push_str("# catch_up: latest is not possible with cron: missed times are not run (`flow schedule` does it).\n");
    }
    comment.push_str(&format!("# Log: {}\n", log.display()));
    let mut command = format!(
        "mkdir -p {} && cd {} && {guard}{} --store {} run {}",
        shell_quote(&places.store.join("cron")),
        shell_quote(&places.workdir),
        shell_quote(&places.flow),
        shell_quote(&places.store),
        shell_quote(&places.file),
    );
    for text in schedule.overrides() {
        command.push_str(&format!(" --set {}", shell_quote(Path::new(&text))));
    }
    command.push_str(&format!(" >> {} 2>&1", shell_quote(&log)));
    Ok(format!(
        "{comment}CRON_TZ={}\n{fields} {}\n",
        schedule.timezone_name,
        command.replace('%', "\\%")
    ))
}

/// Quotes a word for `sh` (single quotes unless it is plainly safe).
fn shell_quote(word: &Path) -> String {
    let text = word.to_string_lossy();
    let safe = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./=:@+,-".contains(c));
    if safe {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote(Path::new("/a/b-c.yaml")), "/a/b-c.yaml");
        assert_eq!(shell_quote(Path::new("/my dir/x")), "'/my dir/x'");
        assert_eq!(shell_quote(Path::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(Path::new("beta=0.2")), "beta=0.2");
    }
}
