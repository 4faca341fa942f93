//! Shared helpers for the integration tests: a scratch project directory and the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory with its own store, where tests write workflows and run `flow`.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// The result of one `flow` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with both streams unless the exit code is `code`.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The `--json` output.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

/// `flow plan --json` actions by node id.
pub fn actions(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The value of `key` for every node of a `--json` run record or plan, in order.
pub fn node_field(json: &serde_json::Value, key: &str) -> Vec<String> {
    json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n[key].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Pairs for comparison with [`actions`].
pub fn expect(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

impl Project {
    pub fn new() -> Self {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join(".flow")
    }

    /// Writes a file below the project.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A `flow` command in the project directory, not attached to a terminal.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("FLOW_STORE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `flow` to completion.
    pub fn flow(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run flow").into()
    }

    /// Starts `flow` in the background.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flow")
    }

    /// Every file below the store's artifacts with its content.
    pub fn artifact_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut found = Vec::new();
        let mut stack = vec![self.store().join("artifacts")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_none_or(|e| e != "json")
                    || dir != self.store().join("artifacts")
                {
                    found.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        found
    }

    /// The single artifact file called `name`.
    pub fn artifact_file(&self, name: &str) -> PathBuf {
        let matches: Vec<PathBuf> = self
            .artifact_files()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.file_name().is_some_and(|f| f == name))
            .collect();
        assert_eq!(matches.len(), 1, "artifact files named {name}: {matches:?}");
        matches.into_iter().next().unwrap()
    }
}

/// Waits until `check` holds (polling), panicking after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether any file below `dir` is named `name`.
pub fn exists_below(dir: &Path, name: &str) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|f| f == name) {
                return true;
            }
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    false
}

/// Sends a signal to a process.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill only sends a signal to our own child.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// The workflow from the engine issue: `make` writes 1..n, `sum` adds them up.
pub const SUM_WORKFLOW: &str = r#"# yaml-language-server: $schema=../schemas/workflow.schema.json
name: example
description: optional text
params:
  n: 3
  label: numbers
nodes:
  make:
    uses: shell
    with:
      run: "seq ${params.n} > $FLOW_OUT/numbers.txt"
  sum:
    uses: shell
    with:
      inputs: { numbers: "${make.out}" }
      run: "awk '{s+=$1} END {print s}' $FLOW_IN_NUMBERS/numbers.txt > $FLOW_OUT/sum.txt"
    after: [make]
    retries: 2
    timeout: 10m
    resources: { gpu: 1 }
  label:
    uses: shell
    with:
      run: "echo ${params.label} > $FLOW_OUT/label.txt"
"#;

/// The device `FLOW_TEST_DEVICE` names (`wgpu`, `cuda:N`) for the node tests that also run on a
/// GPU (CI: `wgpu` over Mesa's software Vulkan); `None`, said on stderr past the harness's
/// capture, when it is unset.
pub fn test_device_name() -> Option<String> {
    use std::io::Write;
    let name = std::env::var("FLOW_TEST_DEVICE").ok();
    if name.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "skipped on a device: FLOW_TEST_DEVICE is unset (e.g. FLOW_TEST_DEVICE=wgpu)"
        );
    }
    name
}

/// `flow ARGS` in the repository root (where the workflows are), with `p`'s store, offline.
pub fn flow_at_root(p: &Project, args: &[&str]) -> Run {
    p.command(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FLOW_STORE", p.store())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run flow")
        .into()
}

/// `tests/fixtures` (tiny Mistral models and golden numbers made with transformers and TRL).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `mistral-tiny/golden.json`.
pub fn golden() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("mistral-tiny/golden.json")).unwrap(),
    )
    .unwrap()
}

/// The golden pairs as a preference dataset `pairs.jsonl` (`copies` times, with distinct ids).
pub fn golden_dataset(p: &Project, copies: usize) -> PathBuf {
    let mut text = String::new();
    for c in 0..copies {
        for (i, pair) in golden()["pairs"].as_array().unwrap().iter().enumerate() {
            let row = serde_json::json!({"id": format!("p{c}-{i}"), "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]});
            text.push_str(&format!("{row}\n"));
        }
    }
    p.write("pairs.jsonl", &text)
}

/// Every line of a JSONL file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// An HTTP server on loopback that runs `app` on a runtime of its own; stops when dropped.
pub struct Loopback {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loopback {
    /// Binds a free port on 127.0.0.1 and serves `app` there.
    pub fn serve(app: axum::Router) -> Loopback {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                ready_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("ready");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let addr = ready_rx.recv().expect("server address");
        Loopback {
            url: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every file directly in `dir`, by name, with its bytes.
pub fn files_in(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("read");
            (e.file_name().to_string_lossy().to_string(), bytes)
        })
        .collect()
}

/// A copy of `model` (a model directory) in the project whose `tensor` holds only NaN
/// (every byte 0xFF: NaN in f32, f16 and bf16), as a diverged or corrupted checkpoint does.
pub fn nan_model(p: &Project, model: &Path, tensor: &str) -> PathBuf {
    let dir = p.path().join("nan-model");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header[tensor]["data_offsets"];
    let (start, end) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    let data = 8 + header_len;
    bytes[data + start..data + end].fill(0xFF);
    std::fs::write(&path, bytes).unwrap();
    dir
}

/// `flow exec evaluate` of `model` against `reference` on `dataset`, with more `--with`
/// params, into `out`.
pub fn exec_evaluate(
    p: &Project,
    (model, reference, dataset): (&Path, &Path, &Path),
    with: &[&str],
    out: &str,
) -> Run {
    let inputs = [
        format!("model={}", model.display()),
        format!("reference={}", reference.display()),
        format!("dataset={}", dataset.display()),
    ];
    let mut args = vec!["exec", "evaluate"];
    for param in inputs
        .iter()
        .map(String::as_str)
        .chain(with.iter().copied())
    {
        args.extend(["--with", param]);
    }
    args.extend(["--out", out]);
    p.flow(&args)
}
