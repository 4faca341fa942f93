//! `flow schedule`: a long-running process that runs workflows at their `schedule:` times,
//! through the same executor and store as `flow run`.
//!
//! - Times come from a [`Clock`], so tests move time by hand.
//! - Overlap: when a time comes while the schedule's previous run still runs, [`Overlap`] decides
//!   (skip, queue, run beside it, or cancel and replace it).
//! - Catch-up: the store remembers, per schedule, until when every time was handled
//!   (`schedules/<workflow>.json`); at start-up, times missed while no scheduler ran are skipped
//!   or run once for the latest ([`CatchUp`]).
//! - Reload: the workflow files are re-read every `reload_every`; a changed file takes effect
//!   for the next time, an invalid one is reported and its last valid version kept.
//! - Shutdown: after `stop`, no run starts; running ones get `grace` to finish and are then
//!   cancelled the way Ctrl-C cancels `flow run` (records say `cancelled`, the store stays
//!   consistent).
//!
//! All of one scheduler's runs share one hold on the store lock, so a manual `flow run` waits
//! while scheduled runs go on, and scheduled runs wait while a manual one goes on.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod clock;

use crate::exec::{RunOptions, SilentObserver, execute};
use crate::node::Registry;
use crate::store::record::{RunRecord, RunStatus};
use crate::store::{Store, StoreError, StoreLock, read_json, write_json_atomic};
use crate::workflow::WorkflowFile;
use crate::workflow::schedule::{CatchUp, Overlap, Schedule};
use crate::workflow::validate::{ValidWorkflow, validate};
pub use clock::{Clock, ManualClock, SystemClock};

/// How the scheduler runs.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Workflow files, and directories whose `*.yaml` / `*.yml` files are read.
    pub sources: Vec<PathBuf>,
    /// Nodes running at once within one run.
    pub jobs: usize,
    /// How often the workflow files are checked for changes.
    pub reload_every: Duration,
    /// After a stop request, how long running runs may go on before they are cancelled.
    pub grace: Duration,
    /// `--executor` / `FLOW_EXECUTOR` for every scheduled run.
    pub executor: Option<crate::workflow::executor::ExecutorKind>,
    /// `--remote` / `FLOW_REMOTE` for every scheduled run.
    pub remote: Option<crate::store::remote::Remote>,
}

/// Asks a running scheduler to stop.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Start nothing more; let running runs finish within the grace period, then cancel them.
    pub stop: CancellationToken,
    /// Cancel running runs now (a second Ctrl-C).
    pub abort: CancellationToken,
}

/// Something the scheduler did, for its log.
#[derive(Clone, Debug)]
pub enum Event {
    /// A workflow file was read; its schedules and their next times.
    Loaded {
        /// The file.
        file: PathBuf,
        /// `label: expression (zone), next at …` per schedule.
        schedules: Vec<String>,
    },
    /// A workflow file is invalid (or unreadable); `kept` says whether its last valid version
    /// stays in force.
    Invalid {
        /// The file.
        file: PathBuf,
        /// The rendered diagnostics.
        error: String,
        /// Whether an earlier valid version is still scheduled.
        kept: bool,
    },
    /// A workflow file went away, or no longer has a schedule.
    Removed {
        /// The file.
        file: PathBuf,
    },
    /// Times passed while no scheduler ran (or while this one could not keep up).
    Missed {
        /// The schedule's label.
        schedule: String,
        /// The latest missed time.
        latest: String,
        /// Whether that latest time runs now.
        catch_up: CatchUp,
    },
    /// A run starts for a scheduled time.
    Started {
        /// The schedule's label.
        schedule: String,
        /// The scheduled time on the schedule's clock.
        time: String,
    },
    /// A time came while the previous run still ran, and was skipped.
    Skipped {
        /// The schedule's label.
        schedule: String,
        /// The scheduled time.
        time: String,
    },
    /// A time came while the previous run still ran, and waits for it.
    Queued {
        /// The schedule's label.
        schedule: String,
        /// The scheduled time.
        time: String,
        /// Runs now waiting for this schedule.
        waiting: usize,
    },
    /// A time came while the previous run still ran, which is being cancelled.
    Replacing {
        /// The schedule's label.
        schedule: String,
        /// The scheduled time.
        time: String,
    },
    /// Another flow process holds the store; the run waits for it.
    WaitingForStore {
        /// The schedule's label.
        schedule: String,
    },
    /// A run ended (any status).
    Finished {
        /// The schedule's label.
        schedule: String,
        /// The run's record.
        record: Box<RunRecord>,
    },
    /// A run could not start.
    RunError {
        /// The schedule's label.
        schedule: String,
        /// Why.
        error: String,
    },
    /// A stop was requested.
    ShuttingDown {
        /// Runs still going.
        running: usize,
        /// Queued runs dropped.
        dropped: usize,
    },
    /// Every run has ended; the scheduler returns.
    Stopped,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Loaded { file, schedules } => {
                write!(f, "loaded {}: {}", file.display(), schedules.join("; "))
            }
            Event::Invalid { file, error, kept } => {
                let kept = if *kept {
                    "its last valid version stays scheduled"
                } else {
                    "not scheduled"
                };
                write!(f, "invalid {} ({kept}):\n{error}", file.display())
            }
            Event::Removed { file } => write!(f, "unscheduled {}", file.display()),
            Event::Missed {
                schedule,
                latest,
                catch_up,
            } => match catch_up {
                CatchUp::Latest => write!(
                    f,
                    "{schedule}: missed times, running the latest ({latest}) now"
                ),
                CatchUp::Skip => write!(
                    f,
                    "{schedule}: missed times up to {latest} are skipped (catch_up: none)"
                ),
            },
            Event::Started { schedule, time } => {
                write!(f, "{schedule}: starting the run for {time}")
            }
            Event::Skipped { schedule, time } => write!(
                f,
                "{schedule}: skipped {time}: the previous run is still running (overlap: skip)"
            ),
            Event::Queued {
                schedule,
                time,
                waiting,
            } => write!(
                f,
                "{schedule}: {time} waits for the running run (overlap: queue, {waiting} waiting)"
            ),
            Event::Replacing { schedule, time } => write!(
                f,
                "{schedule}: cancelling the running run for {time} (overlap: replace)"
            ),
            Event::WaitingForStore { schedule } => write!(
                f,
                "{schedule}: waiting for another flow process to release the store"
            ),
            Event::Finished { schedule, record } => {
                write!(f, "{schedule}: {}", record.summary())
            }
            Event::RunError { schedule, error } => {
                write!(f, "{schedule}: the run could not start: {error}")
            }
            Event::ShuttingDown { running, dropped } => write!(
                f,
                "stopping: {running} run(s) still going, {dropped} queued run(s) dropped"
            ),
            Event::Stopped => write!(f, "stopped"),
        }
    }
}

/// Receives the scheduler's events.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// A workflow file with at least one valid schedule.
pub struct ScheduledFile {
    /// The file.
    pub path: PathBuf,
    /// The text it was validated from (scheduled runs use this text, not a later edit).
    pub source: String,
    /// The validated workflow (params at their defaults).
    pub workflow: ValidWorkflow,
}

impl ScheduledFile {
    /// The schedule's name in logs: the workflow's name, with `[i]` when it has several.
    pub fn label(&self, schedule: &Schedule) -> String {
        if self.workflow.schedules.len() > 1 {
            format!("{}[{}]", self.workflow.name, schedule.index)
        } else {
            self.workflow.name.clone()
        }
    }
}

/// The workflow files named by `sources`: files as given, and the `*.yaml` / `*.yml` files
/// directly inside directories, sorted.
pub fn workflow_files(sources: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for source in sources {
        if source.is_dir() {
            let entries = std::fs::read_dir(source)
                .map_err(|e| format!("cannot read directory {}: {e}", source.display()))?;
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|ext| ext == "yaml" || ext == "yml")
                })
                .collect();
            found.sort();
            files.extend(found);
        } else if source.is_file() {
            files.push(source.clone());
        } else {
            return Err(format!(
                "{} is neither a workflow file nor a directory",
                source.display()
            ));
        }
    }
    Ok(files)
}

/// Validates workflow text from `path`; `Ok(None)` when it has no `schedule:`.
pub fn load_scheduled(
    path: &Path,
    source: String,
    registry: &Registry,
) -> Result<Option<ScheduledFile>, String> {
    let file = WorkflowFile::parse(path, source.clone()).map_err(|d| d.to_string())?;
    let workflow = validate(file, registry, &[]).map_err(|d| d.to_string())?;
    Ok((!workflow.schedules.is_empty()).then(|| ScheduledFile {
        path: path.to_path_buf(),
        source,
        workflow,
    }))
}

/// Per schedule: until when every scheduled time was handled.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ScheduleState {
    /// Keyed by `INDEX EXPRESSION (ZONE)`, so an edited schedule starts afresh.
    handled_until: BTreeMap<String, Timestamp>,
}

fn state_path(store: &Store, workflow: &str) -> PathBuf {
    store
        .root()
        .join("schedules")
        .join(format!("{workflow}.json"))
}

fn state_key(schedule: &Schedule) -> String {
    format!("{} {}", schedule.index, schedule.describe())
}

/// One schedule the scheduler keeps (its file is the first half of its [`EntryKey`]).
struct Entry {
    source: String,
    workflow: String,
    label: String,
    schedule: Schedule,
    next: Option<Timestamp>,
    running: Vec<(u64, CancellationToken)>,
    queued: VecDeque<Timestamp>,
}

type EntryKey = (PathBuf, usize);

/// What a run task hands back.
struct Ended {
    key: EntryKey,
    slot: u64,
    label: String,
    result: Result<RunRecord, String>,
}

/// The running scheduler.
pub struct Scheduler {
    registry: Arc<Registry>,
    store: Store,
    clock: Arc<dyn Clock>,
    config: SchedulerConfig,
    events: EventSink,
    lease: Arc<StoreLease>,
    files: BTreeMap<PathBuf, String>,
    entries: BTreeMap<EntryKey, Entry>,
    runs: JoinSet<Ended>,
    next_slot: u64,
    abort: CancellationToken,
    stopping: bool,
}

impl Scheduler {
    /// A scheduler over `config.sources`, running in `store`.
    pub fn new(
        registry: Arc<Registry>,
        store: Store,
        clock: Arc<dyn Clock>,
        config: SchedulerConfig,
        events: EventSink,
    ) -> Scheduler {
        Scheduler {
            lease: Arc::new(StoreLease::new(store.clone())),
            registry,
            store,
            clock,
            config,
            events,
            files: BTreeMap::new(),
            entries: BTreeMap::new(),
            runs: JoinSet::new(),
            next_slot: 0,
            abort: CancellationToken::new(),
            stopping: false,
        }
    }

    /// Runs until `shutdown.stop`, then shuts down gracefully; returns once every run has ended.
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), StoreError> {
        self.store.create()?;
        self.abort = shutdown.abort.clone();
        self.reload();
        let clock = self.clock.clone();
        let mut next_reload = clock.now() + self.config.reload_every;
        loop {
            let wake = self.next_due().map_or(next_reload, |t| t.min(next_reload));
            let woke = tokio::select! {
                _ = shutdown.stop.cancelled() => Wake::Stop,
                Some(ended) = self.runs.join_next(), if !self.runs.is_empty() => Wake::Ended(Box::new(ended)),
                _ = clock.sleep_until(wake) => Wake::Time,
            };
            match woke {
                Wake::Stop => break,
                Wake::Ended(ended) => self.ended(*ended),
                Wake::Time => {
                    let now = clock.now();
                    if now >= next_reload {
                        self.reload();
                        next_reload = now + self.config.reload_every;
                    }
                    self.fire_due(now);
                }
            }
        }
        self.shut_down().await;
        Ok(())
    }

    fn emit(&self, event: Event) {
        (self.events)(&event);
    }

    fn next_due(&self) -> Option<Timestamp> {
        self.entries.values().filter_map(|e| e.next).min()
    }

    /// Re-reads the workflow files; applies what changed.
    fn reload(&mut self) {
        let paths = match workflow_files(&self.config.sources) {
            Ok(paths) => paths,
            Err(error) => {
                self.emit(Event::Invalid {
                    file: PathBuf::from("."),
                    error,
                    kept: !self.entries.is_empty(),
                });
                return;
            }
        };
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|known| !paths.contains(known))
            .cloned()
            .collect();
        for path in gone {
            self.files.remove(&path);
            if self.unschedule(&path, 0) {
                self.emit(Event::Removed { file: path });
            }
        }
        for path in paths {
            self.reload_file(&path);
        }
    }

    fn reload_file(&mut self, path: &Path) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                let kept = self.is_scheduled(path);
                self.emit(Event::Invalid {
                    file: path.to_path_buf(),
                    error: format!("cannot read it: {e}"),
                    kept,
                });
                return;
            }
        };
        if self.files.get(path) == Some(&text) {
            return;
        }
        self.files.insert(path.to_path_buf(), text.clone());
        match load_scheduled(path, text, &self.registry) {
            Ok(Some(file)) => self.schedule_file(file),
            Ok(None) => {
                if self.unschedule(path, 0) {
                    self.emit(Event::Removed {
                        file: path.to_path_buf(),
                    });
                }
            }
            Err(error) => {
                let kept = self.is_scheduled(path);
                self.emit(Event::Invalid {
                    file: path.to_path_buf(),
                    error,
                    kept,
                });
            }
        }
    }

    fn is_scheduled(&self, path: &Path) -> bool {
        self.entries.keys().any(|(p, _)| p == path)
    }

    /// Drops the schedules of `path` from index `from` on; whether any were dropped.
    /// Their running runs go on to the end.
    fn unschedule(&mut self, path: &Path, from: usize) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(p, i), _| p != path || *i < from);
        self.entries.len() != before
    }

    /// Puts a (re)loaded file's schedules in force; new ones catch up on missed times.
    fn schedule_file(&mut self, file: ScheduledFile) {
        let now = self.clock.now();
        let mut lines = Vec::new();
        for schedule in &file.workflow.schedules {
            let key = (file.path.clone(), schedule.index);
            let label = file.label(schedule);
            let next = schedule.next_after(now);
            // A reloaded schedule keeps its running and queued runs.
            let previous = self.entries.remove(&key);
            let is_new = previous.is_none();
            let (running, queued) =
                previous.map_or_else(Default::default, |e| (e.running, e.queued));
            let entry = Entry {
                source: file.source.clone(),
                workflow: file.workflow.name.clone(),
                label: label.clone(),
                schedule: schedule.clone(),
                next,
                running,
                queued,
            };
            self.entries.insert(key.clone(), entry);
            let next_text =
                next.map_or("never".to_string(), |t| schedule.local_time(t).to_string());
            lines.push(format!(
                "{label}: {}, next at {next_text}",
                schedule.describe()
            ));
            if is_new {
                self.catch_up(&key, now);
            }
        }
        self.unschedule(&file.path, file.workflow.schedules.len());
        self.emit(Event::Loaded {
            file: file.path.clone(),
            schedules: lines,
        });
    }

    /// Handles times between the last handled one (from the store) and `now`.
    fn catch_up(&mut self, key: &EntryKey, now: Timestamp) {
        let entry = &self.entries[key];
        let handled = self.handled_until(&entry.workflow, &entry.schedule);
        let missed = handled.and_then(|handled| {
            entry
                .schedule
                .latest_at_or_before(now)
                .filter(|latest| *latest > handled)
        });
        if let Some(latest) = missed {
            let catch_up = entry.schedule.catch_up;
            self.emit(Event::Missed {
                schedule: entry.label.clone(),
                latest: entry.schedule.local_time(latest).to_string(),
                catch_up,
            });
            if catch_up == CatchUp::Latest {
                self.fire(key, latest);
            }
        }
        self.mark_handled(key, now);
    }

    fn handled_until(&self, workflow: &str, schedule: &Schedule) -> Option<Timestamp> {
        let state: ScheduleState = read_json(&state_path(&self.store, workflow))?;
        state.handled_until.get(&state_key(schedule)).copied()
    }

    /// Remembers in the store that every time of this schedule up to `time` was handled.
    fn mark_handled(&self, key: &EntryKey, time: Timestamp) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let path = state_path(&self.store, &entry.workflow);
        let mut state: ScheduleState = read_json(&path).unwrap_or_default();
        state.handled_until.insert(state_key(&entry.schedule), time);
        if let Err(e) = write_json_atomic(&path, &state) {
            self.emit(Event::RunError {
                schedule: entry.label.clone(),
                error: format!("cannot record the schedule's state: {e}"),
            });
        }
    }

    /// Fires every schedule whose time has come; a schedule that fell behind (the machine
    /// slept) fires once, for its latest time.
    fn fire_due(&mut self, now: Timestamp) {
        let due: Vec<(EntryKey, Timestamp)> = self
            .entries
            .iter()
            .filter_map(|(key, e)| e.next.filter(|t| *t <= now).map(|t| (key.clone(), t)))
            .collect();
        for (key, first) in due {
            let entry = &self.entries[&key];
            let latest = entry.schedule.latest_at_or_before(now).unwrap_or(first);
            if latest > first {
                self.emit(Event::Missed {
                    schedule: entry.label.clone(),
                    latest: entry.schedule.local_time(latest).to_string(),
                    catch_up: CatchUp::Latest,
                });
            }
            self.fire(&key, latest);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.next = entry.schedule.next_after(latest.max(now));
            }
        }
    }

    /// The time `time` of schedule `key` has come: start, skip, queue or replace.
    fn fire(&mut self, key: &EntryKey, time: Timestamp) {
        self.mark_handled(key, time);
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let schedule = entry.label.clone();
        let time_text = entry.schedule.local_time(time).to_string();
        if entry.running.is_empty() {
            self.launch(key, time);
            return;
        }
        match entry.schedule.overlap {
            Overlap::Allow => self.launch(key, time),
            Overlap::Skip => self.emit(Event::Skipped {
                schedule,
                time: time_text,
            }),
            Overlap::Queue => {
                entry.queued.push_back(time);
                let waiting = entry.queued.len();
                self.emit(Event::Queued {
                    schedule,
                    time: time_text,
                    waiting,
                });
            }
            Overlap::Replace => {
                for (_, token) in &entry.running {
                    token.cancel();
                }
                self.emit(Event::Replacing {
                    schedule,
                    time: time_text,
                });
                self.launch(key, time);
            }
        }
    }

    /// Starts a run of schedule `key` for `time`.
    fn launch(&mut self, key: &EntryKey, time: Timestamp) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let token = self.abort.child_token();
        let slot = self.next_slot;
        self.next_slot += 1;
        entry.running.push((slot, token.clone()));
        let local = entry.schedule.local_time(time).to_string();
        let job = ScheduledRun {
            registry: self.registry.clone(),
            store: self.store.clone(),
            lease: self.lease.clone(),
            events: self.events.clone(),
            path: key.0.clone(),
            source: entry.source.clone(),
            overrides: entry.schedule.overrides(),
            label: entry.label.clone(),
            options: RunOptions {
                jobs: self.config.jobs.max(1),
                trigger: format!(
                    "schedule {}: {} at {local}",
                    entry.label,
                    entry.schedule.describe()
                ),
                executor: self.config.executor,
                remote: self.config.remote.clone(),
                ..RunOptions::default()
            },
            cancel: token,
        };
        let (key, label) = (key.clone(), entry.label.clone());
        self.emit(Event::Started {
            schedule: label.clone(),
            time: local,
        });
        self.runs.spawn(async move {
            let result = match tokio::spawn(job.run()).await {
                Ok(result) => result,
                Err(e) => Err(format!("the run's task failed: {e}")),
            };
            Ended {
                key,
                slot,
                label,
                result,
            }
        });
    }

    /// A run ended: report it; start the next queued one.
    fn ended(&mut self, ended: Result<Ended, tokio::task::JoinError>) {
        let Ok(ended) = ended else {
            return;
        };
        match ended.result {
            Ok(record) => self.emit(Event::Finished {
                schedule: ended.label,
                record: Box::new(record),
            }),
            Err(error) => self.emit(Event::RunError {
                schedule: ended.label,
                error,
            }),
        }
        let Some(entry) = self.entries.get_mut(&ended.key) else {
            return;
        };
        entry.running.retain(|(slot, _)| *slot != ended.slot);
        if self.stopping || !entry.running.is_empty() {
            return;
        }
        if let Some(time) = entry.queued.pop_front() {
            self.launch(&ended.key, time);
        }
    }

    /// Starts nothing more; gives running runs the grace period, cancels them, waits for them.
    async fn shut_down(&mut self) {
        self.stopping = true;
        let now = self.clock.now();
        let dropped = self
            .entries
            .values_mut()
            .map(|e| std::mem::take(&mut e.queued).len())
            .sum();
        self.emit(Event::ShuttingDown {
            running: self.runs.len(),
            dropped,
        });
        let keys: Vec<EntryKey> = self.entries.keys().cloned().collect();
        for key in &keys {
            self.mark_handled(key, now);
        }
        let clock = self.clock.clone();
        let deadline = clock.sleep_until(now + self.config.grace);
        tokio::pin!(deadline);
        let abort = self.abort.clone();
        while !self.runs.is_empty() {
            let woke = tokio::select! {
                Some(ended) = self.runs.join_next() => Wake::Ended(Box::new(ended)),
                _ = &mut deadline, if !abort.is_cancelled() => Wake::Time,
                _ = abort.cancelled(), if !abort.is_cancelled() => Wake::Stop,
            };
            match woke {
                Wake::Ended(ended) => self.ended(*ended),
                Wake::Time | Wake::Stop => abort.cancel(),
            }
        }
        self.emit(Event::Stopped);
    }
}

/// Why the scheduler's loop woke up.
enum Wake {
    Stop,
    Ended(Box<Result<Ended, tokio::task::JoinError>>),
    Time,
}

/// One scheduled run, ready to go.
struct ScheduledRun {
    registry: Arc<Registry>,
    store: Store,
    lease: Arc<StoreLease>,
    events: EventSink,
    path: PathBuf,
    source: String,
    overrides: Vec<String>,
    label: String,
    options: RunOptions,
    cancel: CancellationToken,
}

impl ScheduledRun {
    async fn run(self) -> Result<RunRecord, String> {
        let file = WorkflowFile::parse(&self.path, self.source).map_err(|d| d.to_string())?;
        let workflow =
            validate(file, &self.registry, &self.overrides).map_err(|d| d.to_string())?;
        let _hold = self
            .lease
            .acquire(&self.cancel, &|| {
                (self.events)(&Event::WaitingForStore {
                    schedule: self.label.clone(),
                })
            })
            .await?;
        let record = execute(
            Arc::new(workflow),
            self.store,
            self.options,
            Arc::new(SilentObserver),
            self.cancel,
        )
        .await
        .map_err(|e| e.to_string())?;
        if record.status == RunStatus::Running {
            return Err(format!("run {} ended without a status", record.id));
        }
        Ok(record)
    }
}

/// The store lock, held once for all of this process's scheduled runs: taken when the first
/// run starts, released when the last one ends.
struct StoreLease {
    store: Store,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    lock: Option<StoreLock>,
    users: usize,
}

/// One run's share of the store lock.
struct LeaseHold(Arc<StoreLease>);

impl Drop for LeaseHold {
    fn drop(&mut self) {
        let mut held = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.users -= 1;
        if held.users == 0 {
            held.lock = None;
        }
    }
}

/// How often a run waiting for another process's store lock tries again.
const STORE_RETRY: Duration = Duration::from_millis(500);

impl StoreLease {
    fn new(store: Store) -> StoreLease {
        StoreLease {
            store,
            held: Mutex::new(Held::default()),
        }
    }

    /// Waits for a share of the lock; `Err` when cancelled first or the store fails.
    async fn acquire(
        self: &Arc<Self>,
        cancel: &CancellationToken,
        on_wait: &(dyn Fn() + Send + Sync),
    ) -> Result<LeaseHold, String> {
        let mut told = false;
        loop {
            if let Some(hold) = self.try_acquire().map_err(|e| e.to_string())? {
                return Ok(hold);
            }
            if !told {
                on_wait();
                told = true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err("cancelled while waiting for the store".into()),
                _ = tokio::time::sleep(STORE_RETRY) => {}
            }
        }
    }

    fn try_acquire(self: &Arc<Self>) -> Result<Option<LeaseHold>, StoreError> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.users == 0 {
            match self.store.lock(false, &|_| {}) {
                Ok(lock) => held.lock = Some(lock),
                Err(StoreError::Locked { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        held.users += 1;
        Ok(Some(LeaseHold(self.clone())))
    }
}

#[cfg(test)]
mod tests;
