//! `shell`: runs a command line with `sh -c`, as DVC's `cmd` does.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

/// Runs a command line with `sh -c`.
pub struct Shell;

/// Params of `shell`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellParams {
    /// The command line, run with `sh -c` in flow's working directory. It writes its result into `$FLOW_OUT` and reads input `NAME` from `$FLOW_IN_NAME`; `$FLOW_WORK` is a scratch directory.
    pub run: String,
    /// Input artifacts: name → `${NODE.OUTPUT}`. Each is passed as `$FLOW_IN_<NAME>` (upper-cased, other characters as `_`).
    #[serde(default)]
    pub inputs: BTreeMap<String, PathBuf>,
    /// Extra environment variables for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The environment variable that carries input `name`.
pub fn input_variable(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("FLOW_IN_{upper}")
}

impl Node for Shell {
    type Params = ShellParams;
    const TYPE: &'static str = "shell";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Runs a command line with `sh -c`. The command writes its result into `$FLOW_OUT` (output `out`), reads each input from `$FLOW_IN_<NAME>`, and its stdout and stderr go to the node's log. A non-zero exit fails the node.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "out",
        description: "the directory the command wrote to as `$FLOW_OUT`",
    }];

    fn external_files(params: &ShellParams) -> Vec<PathBuf> {
        params.inputs.values().cloned().collect()
    }

    async fn run(&self, ctx: NodeContext, params: ShellParams) -> Result<(), NodeError> {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&params.run)
            .env("FLOW_OUT", ctx.output_dir("out")?)
            .env("FLOW_WORK", &ctx.work_dir)
            .env("FLOW_NODE", &ctx.node_id)
            .envs(&params.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (name, path) in &params.inputs {
            command.env(input_variable(name), path);
        }
        let mut child = command
            .spawn()
            .map_err(|e| NodeError::new(format!("cannot start `sh`: {e}")))?;
        let _group = ProcessGroupGuard(child.id());
        let stdout = forward(child.stdout.take(), ctx.clone());
        let stderr = forward(child.stderr.take(), ctx.clone());
        let status = child.wait().await?;
        let _ = tokio::join!(stdout, stderr);
        if status.success() {
            return Ok(());
        }
        Err(NodeError::new(match status.code() {
            Some(code) => format!("command exited with status {code}"),
            None => "command was killed by a signal".to_string(),
        }))
    }
}

/// Copies a child's output into the node log, line by line.
fn forward<R: AsyncRead + Unpin + Send + 'static>(
    stream: Option<R>,
    ctx: NodeContext,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(stream) = stream else { return };
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            ctx.log().line(&line);
        }
    })
}

/// Kills the command's whole process group when the node is cancelled, times out or ends,
/// so no grandchild outlives it.
struct ProcessGroupGuard(Option<u32>);

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: killpg only sends a signal; the group id is the child's pid (process_group(0)).
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_names_become_environment_variables() {
        assert_eq!(input_variable("numbers"), "FLOW_IN_NUMBERS");
        assert_eq!(input_variable("base-model.v2"), "FLOW_IN_BASE_MODEL_V2");
    }
}
