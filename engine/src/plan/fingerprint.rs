//! # Why a node re-runs
//!
//! A node's *fingerprint* is everything that can change its outputs. Its cache key is the
//! blake3 hash of the fingerprint's canonical JSON (keys sorted, no whitespace):
//!
//! | part | what it holds |
//! |---|---|
//! | `node_type`, `node_version` | the implementation: bump the version when results change |
//! | `with` | the node's params with `${params.X}` substituted; `${NODE.OUTPUT}`, `${env.X}` and `${secret.X}` stay symbolic |
//! | `params` | the workflow params the node references, by name (so reasons can name them) |
//! | `inputs` | `NODE.OUTPUT` → the content digest of that artifact |
//! | `env` | the value of every `${env.X}` the node references |
//! | `files` | for files outside the store that the node reads (`Node::external_files`): a digest of their paths, sizes and modification times |
//! | `remote` | state outside flow the node depends on (`Node::remote_state`): a Hub branch's commit sha and file etags, say |
//!
//! Secrets never enter it: changing a token does not re-run anything, and no value of a
//! secret is ever written to the store. Input *paths* never enter it either, only digests,
//! so moving the store or re-creating an identical upstream artifact changes nothing.
//!
//! When a key has no cache entry, the fingerprint is compared with the one stored for the
//! same workflow and node id after its last successful run, and the differences are the
//! [`Reason`]s `flow plan` prints — as cargo's `DirtyReason` explains a rebuild.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;

use crate::diagnostic::Diagnostic;
use crate::workflow::reference::{Reference, interpolate, references_in};
use crate::workflow::validate::{ValidNode, param_value};
use crate::workflow::yaml::Yaml;

/// What an input digest is while planning, when its producer has not run yet.
pub const PENDING: &str = "pending";

/// Everything that can change a node's outputs. See the module docs for the recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// `uses:`.
    pub node_type: String,
    /// The node type's version string.
    pub node_version: String,
    /// Params, params substituted, other references symbolic.
    pub with: Json,
    /// Workflow params referenced by the node.
    pub params: BTreeMap<String, Json>,
    /// `NODE.OUTPUT` → artifact digest (or [`PENDING`]).
    pub inputs: BTreeMap<String, String>,
    /// Referenced environment variables → values.
    pub env: BTreeMap<String, String>,
    /// External files the node reads → digest of their sizes and modification times.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Remote state the node depends on → its current value (absent from the key when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub remote: BTreeMap<String, String>,
}

impl Fingerprint {
    /// Computes a node's fingerprint; `input_digests` maps `NODE.OUTPUT` to digests.
    pub fn compute(
        node: &ValidNode,
        params: &BTreeMap<String, Json>,
        input_digests: &BTreeMap<String, String>,
    ) -> Result<Fingerprint, Vec<Diagnostic>> {
        let (mut fp, with) = Self::compute_with(node, params, input_digests)?;
        fp.remote = node
            .node_type
            .remote_state(&with)
            .unwrap_or_else(|error| BTreeMap::from([("unresolved".to_string(), error)]));
        Ok(fp)
    }

    /// The fingerprint without its remote part: what the workflow and local files decide
    /// (no network access).
    pub fn compute_local(
        node: &ValidNode,
        params: &BTreeMap<String, Json>,
        input_digests: &BTreeMap<String, String>,
    ) -> Result<Fingerprint, Vec<Diagnostic>> {
        Self::compute_with(node, params, input_digests).map(|(fp, _)| fp)
    }

    /// The local fingerprint, and the node's `with` resolved in full (the fingerprint's own
    /// `with` leaves out the node type's layout params, [`crate::node::Node::LAYOUT_PARAMS`]).
    fn compute_with(
        node: &ValidNode,
        params: &BTreeMap<String, Json>,
        input_digests: &BTreeMap<String, String>,
    ) -> Result<(Fingerprint, Json), Vec<Diagnostic>> {
        let mut fp = Fingerprint {
            node_type: node.node_type.type_name().to_string(),
            node_version: node.node_type.version().to_string(),
            with: Json::Null,
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            env: BTreeMap::new(),
            files: BTreeMap::new(),
            remote: BTreeMap::new(),
        };
        let mut resolve = |r: &Reference| -> Result<Json, String> {
            match r {
                Reference::Param { name, path } => {
                    fp.params
                        .insert(name.clone(), param_value(params, name, &[])?);
                    param_value(params, name, path)
                }
                Reference::Env(name) => {
                    let value = std::env::var(name)
                        .map_err(|_| format!("environment variable `{name}` is not set"))?;
                    fp.env.insert(name.clone(), value);
                    Ok(Json::String(r.to_string()))
                }
                Reference::Secret(_) => Ok(Json::String(r.to_string())),
                Reference::Output { node, output } => {
                    let input = format!("{node}.{output}");
                    let digest = input_digests
                        .get(&input)
                        .cloned()
                        .unwrap_or_else(|| PENDING.to_string());
                    fp.inputs.insert(input, digest);
                    Ok(Json::String(r.to_string()))
                }
            }
        };
        let with = match &node.with {
            Some(with) => interpolate(with, &format!("nodes.{}.with", node.id), &mut resolve)?,
            None => Json::Object(Default::default()),
        };
        for path in node.node_type.external_files(&with) {
            let text = path.to_string_lossy().to_string();
            if !text.starts_with("${") {
                fp.files.insert(text, crate::store::metadata_digest(&path));
            }
        }
        fp.with = with.clone();
        fp.leave_out_layout(node);
        Ok((fp, with))
    }

    /// Leaves the node type's layout params ([`crate::node::Node::LAYOUT_PARAMS`]) out of the
    /// key: out of `with`, and the workflow params, variables and inputs only they use.
    fn leave_out_layout(&mut self, node: &ValidNode) {
        let layout = node.node_type.layout_params();
        let Some(Yaml::Map(map)) = node.with.as_ref().map(|w| &w.value) else {
            return;
        };
        if layout.is_empty() || !map.iter().any(|(k, _)| layout.contains(&k.value.as_str())) {
            return;
        }
        let used: Vec<Reference> = map
            .iter()
            .filter(|(key, _)| !layout.contains(&key.value.as_str()))
            .flat_map(|(_, value)| references_in(value, ""))
            .filter_map(|found| found.ok().map(|(reference, _, _)| reference))
            .collect();
        let uses = |wanted: &dyn Fn(&Reference) -> bool| used.iter().any(wanted);
        self.params.retain(|name, _| {
            uses(&|r| matches!(r, Reference::Param { name: n, .. } if n == name))
        });
        self.env
            .retain(|name, _| uses(&|r| matches!(r, Reference::Env(n) if n == name)));
        self.inputs.retain(|input, _| {
            uses(&|r| matches!(r, Reference::Output { node, output } if *input == format!("{node}.{output}")))
        });
        if let Json::Object(with) = &mut self.with {
            for key in layout {
                with.remove(*key);
            }
        }
    }

    /// The cache key: blake3 of the canonical JSON.
    pub fn key(&self) -> String {
        let json = serde_json::to_value(self).expect("a fingerprint is plain data");
        blake3::hash(canonical_json(&json).as_bytes())
            .to_hex()
            .to_string()
    }

    /// Whether some input's producer has not run yet.
    pub fn has_pending_inputs(&self) -> bool {
        self.inputs.values().any(|d| d == PENDING)
    }

    /// What changed since `previous`, most fundamental first.
    pub fn changes_since(&self, previous: &Fingerprint) -> Vec<Reason> {
        let mut reasons = Vec::new();
        if self.node_type != previous.node_type {
            reasons.push(Reason::NodeTypeChanged {
                from: previous.node_type.clone(),
                to: self.node_type.clone(),
            });
        } else if self.node_version != previous.node_version {
            reasons.push(Reason::NodeVersionChanged {
                from: previous.node_version.clone(),
                to: self.node_version.clone(),
            });
        }
        for (name, from, to) in map_changes(&previous.params, &self.params) {
            reasons.push(Reason::ParamChanged { name, from, to });
        }
        if !reasons
            .iter()
            .any(|r| matches!(r, Reason::ParamChanged { .. }))
        {
            let empty = serde_json::Map::new();
            let old = previous.with.as_object().unwrap_or(&empty);
            let new = self.with.as_object().unwrap_or(&empty);
            for (name, from, to) in map_changes(old, new) {
                reasons.push(Reason::SettingChanged {
                    field: format!("with.{name}"),
                    from,
                    to,
                });
            }
        }
        for (input, digest) in &self.inputs {
            if digest == PENDING {
                reasons.push(Reason::InputChanged {
                    input: input.clone(),
                    upstream_reruns: true,
                });
            } else if previous.inputs.get(input) != Some(digest) {
                reasons.push(Reason::InputChanged {
                    input: input.clone(),
                    upstream_reruns: false,
                });
            }
        }
        for (name, value) in &self.env {
            if previous.env.get(name) != Some(value) {
                reasons.push(Reason::EnvChanged { name: name.clone() });
            }
        }
        for (path, digest) in &self.files {
            if previous.files.get(path) != Some(digest) {
                reasons.push(Reason::FileChanged { path: path.clone() });
            }
        }
        for (name, value) in &self.remote {
            if previous.remote.get(name) != Some(value) {
                reasons.push(Reason::RemoteChanged {
                    name: name.clone(),
                    value: value.clone(),
                });
            }
        }
        reasons
    }
}

/// Keys whose values differ between two maps: `(key, old or null, new or null)`.
fn map_changes<'a, M>(old: &'a M, new: &'a M) -> Vec<(String, Json, Json)>
where
    &'a M: IntoIterator<Item = (&'a String, &'a Json)>,
{
    let old: BTreeMap<&String, &Json> = old.into_iter().collect();
    let new: BTreeMap<&String, &Json> = new.into_iter().collect();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).copied().collect();
    keys.into_iter()
        .filter(|k| old.get(k) != new.get(k))
        .map(|k| {
            let value =
                |m: &BTreeMap<&String, &Json>| m.get(k).map_or(Json::Null, |v| (*v).clone());
            (k.clone(), value(&old), value(&new))
        })
        .collect()
}

/// JSON with object keys sorted and no whitespace: the same data always gives the same text.
pub fn canonical_json(value: &Json) -> String {
    match value {
        Json::Object(map) => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let body: Vec<String> = entries
                .into_iter()
                .map(|(k, v)| format!("{}:{}", Json::String(k.clone()), canonical_json(v)))
                .collect();
            format!("{{{}}}", body.join(","))
        }
        Json::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

/// Why a node will run (or ran) instead of being taken from the cache.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// No run of this node id has succeeded in this store.
    NeverRun,
    /// `--force NODE` or `--force-all`.
    Forced,
    /// `uses:` changed.
    NodeTypeChanged {
        /// Before.
        from: String,
        /// Now.
        to: String,
    },
    /// The node type's implementation version changed.
    NodeVersionChanged {
        /// Before.
        from: String,
        /// Now.
        to: String,
    },
    /// A workflow param the node references changed.
    ParamChanged {
        /// The param.
        name: String,
        /// Before (null: absent).
        from: Json,
        /// Now (null: absent).
        to: Json,
    },
    /// A value in `with:` changed.
    SettingChanged {
        /// `with.KEY`.
        field: String,
        /// Before.
        from: Json,
        /// Now.
        to: Json,
    },
    /// An input artifact's content changed (or will: its producer re-runs).
    InputChanged {
        /// `NODE.OUTPUT`.
        input: String,
        /// The producer runs in this run, so the new digest is not known yet.
        upstream_reruns: bool,
    },
    /// A referenced environment variable changed.
    EnvChanged {
        /// The variable.
        name: String,
    },
    /// An external file the node reads changed (size or modification time).
    FileChanged {
        /// The path as given in the params.
        path: String,
    },
    /// Remote state the node depends on changed (a Hub branch moved, say).
    RemoteChanged {
        /// What it is.
        name: String,
        /// Its value now.
        value: String,
    },
    /// A cached output's artifact is gone from the store.
    OutputMissing {
        /// The output.
        output: String,
    },
    /// A cached output's artifact no longer matches its manifest.
    OutputCorrupted {
        /// The output.
        output: String,
        /// Which file and how.
        detail: String,
    },
    /// Same fingerprint as the last success, but no cached result (removed by `flow gc`, or the last try failed).
    NoCachedResult,
}

fn short(value: &Json) -> String {
    let text = match value {
        Json::Null => "(unset)".to_string(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(59).collect::<String>())
    } else {
        text
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::Forced => write!(f, "forced"),
            Reason::NodeTypeChanged { from, to } => write!(f, "node type changed {from} → {to}"),
            Reason::NodeVersionChanged { from, to } => {
                write!(f, "node version changed {from} → {to}")
            }
            Reason::ParamChanged { name, from, to } => {
                write!(f, "param {name} changed {} → {}", short(from), short(to))
            }
            Reason::SettingChanged { field, from, to } => {
                write!(f, "{field} changed {} → {}", short(from), short(to))
            }
            Reason::InputChanged {
                input,
                upstream_reruns: true,
            } => {
                write!(
                    f,
                    "input {input} changed ({} re-runs)",
                    input.split('.').next().unwrap_or(input)
                )
            }
            Reason::InputChanged { input, .. } => write!(f, "input {input} changed"),
            Reason::EnvChanged { name } => write!(f, "env {name} changed"),
            Reason::FileChanged { path } => write!(f, "file {path} changed"),
            Reason::RemoteChanged { name, value } => write!(f, "{name} is now {value}"),
            Reason::OutputMissing { output } => write!(f, "output {output} missing from the store"),
            Reason::OutputCorrupted { output, detail } => {
                write!(f, "output {output} corrupted: {detail}")
            }
            Reason::NoCachedResult => write!(
                f,
                "no cached result (last attempt failed, or removed by gc)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fp(with: Json, params: Json, inputs: &[(&str, &str)]) -> Fingerprint {
        Fingerprint {
            node_type: "shell".into(),
            node_version: "1".into(),
            with,
            params: serde_json::from_value(params).unwrap(),
            inputs: inputs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            env: BTreeMap::new(),
            files: BTreeMap::new(),
            remote: BTreeMap::new(),
        }
    }

    #[test]
    fn key_ignores_key_order_and_changes_with_content() {
        let a = fp(json!({"a": 1, "b": 2}), json!({}), &[]);
        let b = fp(json!({"b": 2, "a": 1}), json!({}), &[]);
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), fp(json!({"a": 1, "b": 3}), json!({}), &[]).key());
    }

    #[test]
    fn reasons_name_the_param_and_the_input() {
        let old = fp(
            json!({"run": "seq 3"}),
            json!({"n": 3}),
            &[("make.out", "d1")],
        );
        let new = fp(
            json!({"run": "seq 4"}),
            json!({"n": 4}),
            &[("make.out", "d2")],
        );
        let reasons: Vec<String> = new
            .changes_since(&old)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(reasons, ["param n changed 3 → 4", "input make.out changed"]);
    }

    #[test]
    fn setting_changes_are_reported_when_no_param_explains_them() {
        let old = fp(json!({"run": "a"}), json!({}), &[]);
        let new = fp(json!({"run": "b"}), json!({}), &[("x.out", PENDING)]);
        let reasons: Vec<String> = new
            .changes_since(&old)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            reasons,
            [
                "with.run changed \"a\" → \"b\"",
                "input x.out changed (x re-runs)"
            ]
        );
    }
}
