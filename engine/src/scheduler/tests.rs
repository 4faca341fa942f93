//! The scheduler on a hand-moved clock: times across DST, the four overlap policies, catch-up
//! after downtime, reload, and shutdown in the middle of a run.

use super::*;
use crate::node::{Node, NodeContext, NodeError, OutputSpec};
use crate::store::record::{NodeStatus, RunStatus};
use schemars::JsonSchema;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

/// A gate a test opens and closes; `test.gate` nodes wait at it.
struct Gate {
    open: watch::Sender<bool>,
    started: AtomicUsize,
}

static GATES: LazyLock<Mutex<BTreeMap<String, Arc<Gate>>>> = LazyLock::new(Default::default);
static VISITS: AtomicUsize = AtomicUsize::new(0);

fn gate(name: &str) -> Arc<Gate> {
    GATES
        .lock()
        .unwrap()
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(Gate {
                open: watch::Sender::new(true),
                started: AtomicUsize::new(0),
            })
        })
        .clone()
}

#[derive(Deserialize, JsonSchema)]
struct GateParams {
    gate: String,
}

/// Waits at its gate, then writes a file. Its remote state changes on every look, so every
/// run runs it (as a node fed by a moving Hub branch would).
struct GateNode;

impl Node for GateNode {
    type Params = GateParams;
    const TYPE: &'static str = "test.gate";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Waits until its gate is open.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "out",
        description: "a file",
    }];

    fn remote_state(_: &GateParams) -> Result<BTreeMap<String, String>, String> {
        let visit = VISITS.fetch_add(1, Ordering::SeqCst);
        Ok(BTreeMap::from([("visit".to_string(), visit.to_string())]))
    }

    async fn run(&self, ctx: NodeContext, params: GateParams) -> Result<(), NodeError> {
        let gate = gate(&params.gate);
        gate.started.fetch_add(1, Ordering::SeqCst);
        let mut open = gate.open.subscribe();
        while !*open.borrow_and_update() {
            tokio::select! {
                _ = open.changed() => {}
                _ = ctx.cancellation().cancelled() => return Err(NodeError::new("cancelled")),
            }
        }
        std::fs::write(ctx.output_dir("out")?.join("done.txt"), "done")?;
        Ok(())
    }
}

/// A scheduler over one workflow file, on a manual clock, in a fresh store.
struct Harness {
    _dir: tempfile::TempDir,
    file: PathBuf,
    store: Store,
    clock: Arc<ManualClock>,
    events: Arc<Mutex<Vec<Event>>>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), StoreError>>,
    gate: Arc<Gate>,
}

fn workflow(gate_name: &str, schedule: &str) -> String {
    format!(
        "name: nightly\nparams:\n  label: plain\nschedule:\n{schedule}\nnodes:\n  wait:\n    uses: test.gate\n    with:\n      gate: {gate_name}\n"
    )
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

impl Harness {
    /// Starts at `start` with the schedule block `schedule` (indented YAML) and gate `gate_name`.
    async fn start(gate_name: &str, schedule: &str, start: &str, grace: Duration) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nightly.yaml");
        std::fs::write(&file, workflow(gate_name, schedule)).unwrap();
        let store = Store::at(dir.path().join("store"));
        Self::start_in(dir, file, store, gate_name, start, grace).await
    }

    /// Starts at noon on June 1st 2026 with the daily Berlin schedule and no grace period.
    async fn daily(gate_name: &str) -> Harness {
        Self::start(
            gate_name,
            DAILY_BERLIN,
            "2026-06-01T12:00:00Z",
            Duration::ZERO,
        )
        .await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        file: PathBuf,
        store: Store,
        gate_name: &str,
        start: &str,
        grace: Duration,
    ) -> Harness {
        let clock = Arc::new(ManualClock::new(at(start)));
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |e: &Event| events.lock().unwrap().push(e.clone()))
        };
        let mut registry = Registry::new();
        registry.register(GateNode);
        let config = SchedulerConfig {
            sources: vec![dir.path().to_path_buf()],
            jobs: 2,
            reload_every: Duration::from_secs(1),
            grace,
            executor: None,
            remote: None,
        };
        let scheduler = Scheduler::new(
            Arc::new(registry),
            store.clone(),
            clock.clone(),
            config,
            sink,
        );
        let shutdown = Shutdown::default();
        let task = tokio::spawn(scheduler.run(shutdown.clone()));
        let harness = Harness {
            _dir: dir,
            file,
            store,
            clock,
            events,
            shutdown,
            task,
            gate: gate(gate_name),
        };
        harness
            .wait_for("the file is loaded", |e| {
                matches!(e, Event::Loaded { .. } | Event::Invalid { .. })
            })
            .await;
        harness
    }

    fn count(&self, what: impl Fn(&Event) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| what(e))
            .count()
    }

    /// Waits (real time, at most 20 s) until an event matches `what`.
    async fn wait_for(&self, label: &str, what: impl Fn(&Event) -> bool) {
        self.wait_for_n(label, 1, what).await;
    }

    async fn wait_for_n(&self, label: &str, n: usize, what: impl Fn(&Event) -> bool) {
        for _ in 0..2000 {
            if self.count(&what) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{label}: not seen; events: {:#?}",
            self.events.lock().unwrap()
        );
    }

    /// Waits until `n` runs have started their node.
    async fn wait_started(&self, n: usize) {
        for _ in 0..2000 {
            if self.gate.started.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{n} node starts not seen; events: {:#?}",
            self.events.lock().unwrap()
        );
    }

    fn set_time(&self, time: &str) {
        self.clock.set(at(time));
    }

    async fn stop(self) -> (Vec<RunRecord>, Store, tempfile::TempDir) {
        self.shutdown.stop.cancel();
        let Harness {
            _dir,
            store,
            events,
            task,
            ..
        } = self;
        task.await.unwrap().unwrap();
        (finished_records(&events), store, _dir)
    }
}

fn finished_records(events: &Mutex<Vec<Event>>) -> Vec<RunRecord> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Finished { record, .. } => Some((**record).clone()),
            _ => None,
        })
        .collect()
}

fn started(e: &Event) -> bool {
    matches!(e, Event::Started { .. })
}

fn finished(e: &Event) -> bool {
    matches!(e, Event::Finished { .. })
}

const DAILY_BERLIN: &str = "  cron: \"30 2 * * *\"\n  timezone: Europe/Berlin\n";

#[tokio::test]
async fn runs_at_its_times_across_the_spring_forward_gap_and_records_the_trigger() {
    // 02:30 does not exist in Berlin on 2026-03-29: the run comes right after the gap, 03:00+02.
    let h = Harness::start("dst", DAILY_BERLIN, "2026-03-28T12:00:00Z", Duration::ZERO).await;
    h.set_time("2026-03-29T00:59:59Z");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.count(started), 0, "nothing before 03:00+02");
    h.set_time("2026-03-29T01:00:00Z");
    h.wait_for("the run ends", finished).await;
    let (records, store, _dir) = h.stop().await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.status, RunStatus::Succeeded);
    assert!(
        record
            .trigger
            .contains("schedule nightly: 30 2 * * * (Europe/Berlin) at 2026-03-29T03:00:00+02:00"),
        "{}",
        record.trigger
    );
    let stored = RunRecord::list(&store);
    assert_eq!(stored.len(), 1, "a scheduled run is a normal run record");
    assert_eq!(stored[0].trigger, record.trigger);
}

#[tokio::test]
async fn overlap_skip_drops_a_time_while_the_last_run_runs() {
    let schedule = "  cron: \"0 * * * *\"\n  overlap: skip\n";
    let h = Harness::start("skip", schedule, "2026-06-01T00:30:00Z", Duration::ZERO).await;
    h.gate.open.send_replace(false);
    h.set_time("2026-06-01T01:00:00Z");
    h.wait_started(1).await;
    h.set_time("2026-06-01T02:00:00Z");
    h.wait_for("skipped", |e| matches!(e, Event::Skipped { .. }))
        .await;
    h.gate.open.send_replace(true);
    h.wait_for("the run ends", finished).await;
    let (records, _, _dir) = h.stop().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, RunStatus::Succeeded);
}

#[tokio::test]
async fn overlap_queue_runs_every_time_one_after_another() {
    let schedule = "  cron: \"0 * * * *\"\n  overlap: queue\n";
    let h = Harness::start("queue", schedule, "2026-06-01T00:30:00Z", Duration::ZERO).await;
    h.gate.open.send_replace(false);
    h.set_time("2026-06-01T01:00:00Z");
    h.wait_started(1).await;
    h.set_time("2026-06-01T02:00:00Z");
    h.wait_for("queued", |e| matches!(e, Event::Queued { waiting: 1, .. }))
        .await;
    h.set_time("2026-06-01T03:00:00Z");
    h.wait_for("queued", |e| matches!(e, Event::Queued { waiting: 2, .. }))
        .await;
    assert_eq!(h.gate.started.load(Ordering::SeqCst), 1, "one at a time");
    h.gate.open.send_replace(true);
    h.wait_for_n("three runs end", 3, finished).await;
    let (records, _, _dir) = h.stop().await;
    assert!(records.iter().all(|r| r.status == RunStatus::Succeeded));
    let times: Vec<bool> = ["01:00", "02:00", "03:00"]
        .iter()
        .zip(&records)
        .map(|(t, r)| r.trigger.contains(&format!("T{t}:00")))
        .collect();
    assert_eq!(times, [true, true, true], "in order of their times");
}

#[tokio::test]
async fn overlap_allow_runs_side_by_side() {
    let schedule = "  cron: \"0 * * * *\"\n  overlap: allow\n";
    let h = Harness::start("allow", schedule, "2026-06-01T00:30:00Z", Duration::ZERO).await;
    h.gate.open.send_replace(false);
    h.set_time("2026-06-01T01:00:00Z");
    h.wait_started(1).await;
    h.set_time("2026-06-01T02:00:00Z");
    h.wait_started(2).await;
    h.gate.open.send_replace(true);
    h.wait_for_n("both runs end", 2, finished).await;
    let (records, _, _dir) = h.stop().await;
    assert!(records.iter().all(|r| r.status == RunStatus::Succeeded));
}

#[tokio::test]
async fn overlap_replace_cancels_the_running_run() {
    let schedule = "  cron: \"0 * * * *\"\n  overlap: replace\n";
    let h = Harness::start("replace", schedule, "2026-06-01T00:30:00Z", Duration::ZERO).await;
    h.gate.open.send_replace(false);
    h.set_time("2026-06-01T01:00:00Z");
    h.wait_started(1).await;
    h.set_time("2026-06-01T02:00:00Z");
    h.wait_for("the first run ends", finished).await;
    h.wait_started(2).await;
    h.gate.open.send_replace(true);
    h.wait_for_n("the second run ends", 2, finished).await;
    let (records, _, _dir) = h.stop().await;
    let statuses: Vec<RunStatus> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [RunStatus::Cancelled, RunStatus::Succeeded]);
}

/// Runs a first scheduler until `stop_at`, then starts a second one at `restart_at`.
async fn downtime(schedule: &str, gate_name: &str, stop_at: &str, restart_at: &str) -> Harness {
    let first = Harness::start(gate_name, schedule, "2026-06-01T12:00:00Z", Duration::ZERO).await;
    first.set_time(stop_at);
    first.wait_for("the run ends", finished).await;
    let file = first.file.clone();
    let (_, store, dir) = first.stop().await;
    Harness::start_in(dir, file, store, gate_name, restart_at, Duration::ZERO).await
}

#[tokio::test]
async fn catch_up_latest_runs_once_for_the_latest_missed_time() {
    let schedule = "  cron: \"0 3 * * *\"\n  catch_up: latest\n";
    // Up on June 2nd (one run at 03:00), down for three days, back on June 5th at noon.
    let h = downtime(
        schedule,
        "latest",
        "2026-06-02T03:00:00Z",
        "2026-06-05T12:00:00Z",
    )
    .await;
    h.wait_for("the catch-up run ends", finished).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.count(started), 1, "once, not three times");
    let (records, store, _dir) = h.stop().await;
    assert!(
        records[0]
            .trigger
            .ends_with("at 2026-06-05T03:00:00+00:00[UTC]"),
        "{}",
        records[0].trigger
    );
    assert_eq!(RunRecord::list(&store).len(), 2);
}

#[tokio::test]
async fn catch_up_none_skips_missed_times_and_waits_for_the_next() {
    let schedule = "  cron: \"0 3 * * *\"\n";
    let h = downtime(
        schedule,
        "none",
        "2026-06-02T03:00:00Z",
        "2026-06-05T12:00:00Z",
    )
    .await;
    h.wait_for("missed reported", |e| {
        matches!(
            e,
            Event::Missed {
                catch_up: CatchUp::Skip,
                ..
            }
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.count(started), 0);
    h.set_time("2026-06-06T03:00:00Z");
    h.wait_for("the next run ends", finished).await;
    let (_, store, _dir) = h.stop().await;
    assert_eq!(RunRecord::list(&store).len(), 2);
}

#[tokio::test]
async fn shutdown_mid_run_cancels_it_and_leaves_the_store_consistent() {
    let h = Harness::daily("shutdown").await;
    h.gate.open.send_replace(false);
    h.set_time("2026-06-02T00:30:00Z");
    h.wait_started(1).await;
    let (records, store, _dir) = h.stop().await;
    assert_eq!(records.len(), 1);
    let stored = RunRecord::list(&store);
    assert_eq!(stored[0].status, RunStatus::Cancelled);
    assert_eq!(stored[0].nodes[0].status, NodeStatus::Cancelled);
    assert!(stored[0].finished_at.is_some());
    let leftovers = std::fs::read_dir(store.root().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no half-written outputs stay behind");
    assert!(
        store
            .cache_entry(stored[0].nodes[0].key.as_ref().unwrap())
            .is_none()
    );
    store
        .lock(false, &|_| {})
        .expect("the store lock is released");
}

#[tokio::test]
async fn shutdown_lets_a_run_finish_within_the_grace_period() {
    let grace = Duration::from_secs(3600);
    let h = Harness::start("grace", DAILY_BERLIN, "2026-06-01T12:00:00Z", grace).await;
    h.gate.open.send_replace(false);
    h.set_time("2026-06-02T00:30:00Z");
    h.wait_started(1).await;
    h.shutdown.stop.cancel();
    h.wait_for("shutting down", |e| {
        matches!(e, Event::ShuttingDown { running: 1, .. })
    })
    .await;
    h.gate.open.send_replace(true);
    let (records, _, _dir) = h.stop().await;
    assert_eq!(records[0].status, RunStatus::Succeeded);
}

#[tokio::test]
async fn reload_applies_an_edit_and_keeps_the_last_valid_version_of_a_bad_one() {
    let h = Harness::daily("reload").await;
    let hourly = workflow("reload", "  cron: \"0 * * * *\"\n");
    std::fs::write(&h.file, hourly).unwrap();
    h.set_time("2026-06-01T12:00:01Z");
    h.wait_for_n("reloaded", 2, |e| matches!(e, Event::Loaded { .. }))
        .await;
    let broken = workflow("reload", "  cron: \"0 25 * * *\"\n");
    std::fs::write(&h.file, broken).unwrap();
    h.set_time("2026-06-01T12:00:03Z");
    h.wait_for("invalid", |e| {
        matches!(e, Event::Invalid { kept: true, error, .. } if error.contains("schedule.cron"))
    })
    .await;
    h.set_time("2026-06-01T13:00:00Z");
    h.wait_for("the hourly run ends", finished).await;
    let (records, _, _dir) = h.stop().await;
    assert!(
        records[0].trigger.contains("0 * * * *"),
        "{}",
        records[0].trigger
    );
}

#[tokio::test]
async fn a_scheduled_run_waits_while_another_process_holds_the_store() {
    let h = Harness::daily("store").await;
    // flock: a second open file description conflicts, as another process's would.
    let manual_run = h.store.lock(false, &|_| {}).unwrap();
    h.set_time("2026-06-02T00:30:00Z");
    h.wait_for("waiting", |e| matches!(e, Event::WaitingForStore { .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.gate.started.load(Ordering::SeqCst), 0);
    drop(manual_run);
    h.wait_for("the run ends", finished).await;
    let (records, _, _dir) = h.stop().await;
    assert_eq!(records[0].status, RunStatus::Succeeded);
}

#[tokio::test]
async fn a_deleted_file_is_unscheduled() {
    let h = Harness::daily("deleted").await;
    std::fs::remove_file(&h.file).unwrap();
    h.set_time("2026-06-01T12:00:02Z");
    h.wait_for("removed", |e| matches!(e, Event::Removed { .. }))
        .await;
    h.set_time("2026-06-02T12:00:00Z");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.count(started), 0);
    let (records, _, _dir) = h.stop().await;
    assert!(records.is_empty());
}

#[tokio::test]
async fn schedule_params_reach_the_run() {
    let schedule = "  cron: \"0 3 * * *\"\n  params: {label: weekly}\n";
    let h = Harness::start("params", schedule, "2026-06-01T12:00:00Z", Duration::ZERO).await;
    h.set_time("2026-06-02T03:00:00Z");
    h.wait_for("the run ends", finished).await;
    let (records, _, _dir) = h.stop().await;
    assert_eq!(records[0].params["label"], "weekly");
}

#[test]
fn a_bad_schedule_is_a_validation_error_with_its_place() {
    let text = "name: x\nparams:\n  n: 1\nschedule:\n  - cron: \"0 3 * *\"\n  - cron: \"0 3 * * 1\"\n    timezone: Europe/Berln\n    params: {m: 2}\nnodes:\n  wait:\n    uses: test.gate\n    with:\n      gate: g\n";
    let file = WorkflowFile::parse(Path::new("w.yaml"), text.to_string()).unwrap();
    let mut registry = Registry::new();
    registry.register(GateNode);
    let errors = validate(file, &registry, &[]).err().expect("invalid").items;
    let found: Vec<(u32, Option<&str>)> = errors
        .iter()
        .map(|d| (d.span.map_or(0, |s| s.line), d.field.as_deref()))
        .collect();
    assert_eq!(
        found,
        [
            (5, Some("schedule[0].cron")),
            (7, Some("schedule[1].timezone")),
            (8, Some("schedule[1].params.m")),
        ],
        "{errors:#?}"
    );
    assert!(
        errors[0]
            .message
            .contains("invalid cron expression `0 3 * *`")
    );
    assert!(errors[1].hint.as_deref().unwrap().contains("Europe/Berlin"));
}
