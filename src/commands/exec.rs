//! `flow exec`: one node outside a workflow, outputs written to a directory.

use flow_engine::exec::CancellationToken;
use flow_engine::node::{LogSink, NoProgress, NodeContext};
use flow_engine::workflow::params::parse_override;
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Failure;
use crate::cli::ExecArgs;

/// Sets `a.b.c = value` inside a JSON object.
fn set_nested(root: &mut Map<String, Json>, dotted: &str, value: Json) -> Result<(), String> {
    let mut keys = dotted.split('.').peekable();
    let mut here = root;
    while let Some(key) = keys.next() {
        if keys.peek().is_none() {
            here.insert(key.to_string(), value);
            return Ok(());
        }
        let slot = here
            .entry(key.to_string())
            .or_insert_with(|| Json::Object(Map::new()));
        here = slot
            .as_object_mut()
            .ok_or_else(|| format!("`{key}` is already set to a non-map value"))?;
    }
    Ok(())
}

/// The params object from `--with` and `--input` flags.
/// String-typed params keep the text as given (`run=true` is the command `true`, not a bool).
fn build_params(args: &ExecArgs, schema: &Json) -> Result<Json, Failure> {
    let has_inputs_map = schema.pointer("/properties/inputs").is_some();
    let mut params = Map::new();
    for text in &args.with {
        let (name, mut value) = parse_override(text)
            .map_err(|e| Failure::Input(format!("error: {}", e.replace("--set", "--with"))))?;
        if schema
            .pointer(&format!("/properties/{name}/type"))
            .and_then(Json::as_str)
            == Some("string")
        {
            value = Json::String(text.split_once('=').map_or("", |(_, v)| v).to_string());
        }
        set_nested(&mut params, &name, value)
            .map_err(|e| Failure::Input(format!("error: invalid --with `{text}`: {e}")))?;
    }
    for text in &args.inputs {
        let (name, path) = text.split_once('=').ok_or_else(|| {
            Failure::Input(format!(
                "error: invalid --input `{text}`: expected NAME=PATH"
            ))
        })?;
        let path = PathBuf::from(path);
        if !path.exists() {
            return Err(Failure::Input(format!(
                "error: --input {name}: `{}` does not exist",
                path.display()
            )));
        }
        let path = std::path::absolute(&path)
            .unwrap_or(path)
            .to_string_lossy()
            .to_string();
        let key = if has_inputs_map {
            format!("inputs.{name}")
        } else {
            name.to_string()
        };
        set_nested(&mut params, &key, Json::String(path))
            .map_err(|e| Failure::Input(format!("error: invalid --input `{text}`: {e}")))?;
    }
    Ok(Json::Object(params))
}

/// `flow exec TYPE --with K=V… --input NAME=PATH… --out DIR`.
pub fn exec(args: ExecArgs) -> Result<(), Failure> {
    let registry = flow_nodes::library();
    let node_type = registry.get(&args.node_type).cloned().ok_or_else(|| {
        let hint = flow_engine::diagnostic::did_you_mean(&args.node_type, registry.names())
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        Failure::Input(format!(
            "error: unknown node type `{}`{hint}; `flow nodes` lists the library",
            args.node_type
        ))
    })?;
    let schema = node_type.params_schema().to_value();
    let params = build_params(&args, &schema)?;
    node_type.check_params(&params).map_err(|e| {
        let at = flow_engine::workflow::yaml::path_text(&e.path);
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" `with{at}`")
        };
        Failure::Input(format!(
            "error: {} params{at}: {}",
            node_type.type_name(),
            e.message
        ))
    })?;
    for output in node_type.outputs() {
        let target = args.out.join(output.name);
        if target.exists() {
            return Err(Failure::Input(format!(
                "error: `{}` already exists; refusing to overwrite it",
                target.display()
            )));
        }
    }
    let created_out = !args.out.exists();
    std::fs::create_dir_all(&args.out).map_err(|e| {
        Failure::Input(format!(
            "error: cannot create `{}`: {e}",
            args.out.display()
        ))
    })?;
    let staging = args.out.join(format!(".flow-exec-{:08x}", fastrand_u32()));
    let result = run_staged(node_type, params, &staging, &args.out);
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() && created_out {
        // Only removes the folder exec made when it stayed empty.
        let _ = std::fs::remove_dir(&args.out);
    }
    result
}

fn fastrand_u32() -> u32 {
    std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
}

/// Runs in `staging/`, then renames each output into `out/` (nothing half-written on failure).
fn run_staged(
    node_type: Arc<dyn flow_engine::node::DynNode>,
    params: Json,
    staging: &Path,
    out: &Path,
) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::Run(format!("error: {e}"));
    let mut outputs = BTreeMap::new();
    for spec in node_type.outputs() {
        let dir = std::path::absolute(staging.join("out").join(spec.name)).map_err(io)?;
        std::fs::create_dir_all(&dir).map_err(io)?;
        outputs.insert(spec.name.to_string(), dir);
    }
    let work = std::path::absolute(staging.join("work")).map_err(io)?;
    let resume = std::path::absolute(staging.join("resume")).map_err(io)?;
    std::fs::create_dir_all(&work).map_err(io)?;
    std::fs::create_dir_all(&resume).map_err(io)?;
    let log = LogSink::stderr().map_err(io)?;
    let runtime = super::runtime()?;
    let cancel = CancellationToken::new();
    let ctx = NodeContext::new(
        node_type.type_name(),
        work,
        resume,
        outputs.clone(),
        log,
        cancel.clone(),
        Arc::new(NoProgress),
    );
    let result = runtime.block_on(async {
        tokio::select! {
            result = node_type.clone().run_json(ctx, params) => result.map_err(|e| Failure::Run(format!("error: {} failed: {e}", node_type.type_name()))),
            _ = tokio::signal::ctrl_c() => { cancel.cancel(); Err(Failure::Cancelled("cancelled".into())) }
        }
    });
    result?;
    for (name, dir) in outputs {
        std::fs::rename(&dir, out.join(&name)).map_err(io)?;
        eprintln!("{}", out.join(&name).display());
    }
    Ok(())
}
