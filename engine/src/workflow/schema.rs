//! JSON Schemas derived from the same Rust types that parse workflows (schemars):
//! `workflow.schema.json`, whose `with:` is checked per `uses:`, and one `<type>.schema.json`
//! per node type. `flow schema` writes them; a test fails when the committed ones are stale.

use serde_json::{Value as Json, json};
use std::collections::BTreeMap;

use crate::node::Registry;
use crate::workflow::WorkflowSpec;

/// File name → pretty JSON text, for every schema.
pub fn generate(registry: &Registry) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut workflow = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<WorkflowSpec>()
        .to_value();
    let per_type: Vec<Json> = registry
        .iter()
        .map(|node| {
            json!({
                "if": { "properties": { "uses": { "const": node.type_name() } }, "required": ["uses"] },
                "then": { "properties": { "with": { "$ref": schema_file(node.type_name()) } } }
            })
        })
        .collect();
    if let Some(node_spec) = workflow
        .pointer_mut("/$defs/NodeSpec")
        .and_then(Json::as_object_mut)
    {
        node_spec.insert("allOf".into(), Json::Array(per_type));
        let names: Vec<&str> = registry.names().collect();
        if let Some(uses) = node_spec
            .get_mut("properties")
            .and_then(|p| p.get_mut("uses"))
        {
            uses["enum"] = json!(names);
        }
    }
    files.insert("workflow.schema.json".to_string(), pretty(&workflow));
    for node in registry.iter() {
        let mut schema = node.params_schema().to_value();
        schema["title"] = json!(format!("{} params", node.type_name()));
        schema["description"] = json!(node.description());
        files.insert(schema_file(node.type_name()), pretty(&schema));
    }
    files
}

/// `dpo.train` → `dpo.train.schema.json`.
pub fn schema_file(type_name: &str) -> String {
    format!("{type_name}.schema.json")
}

fn pretty(value: &Json) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("schemas serialize");
    text.push('\n');
    text
}

/// One param of a node type, for docs: name, type, required, default, description.
#[derive(Debug, Clone)]
pub struct ParamDoc {
    /// Param name.
    pub name: String,
    /// JSON type(s).
    pub kind: String,
    /// Whether it must be given.
    pub required: bool,
    /// Default, as JSON text.
    pub default: Option<String>,
    /// Doc comment.
    pub description: String,
}

/// The params of a node type, read from its schema (the doc comments of its params struct).
pub fn param_docs(schema: &Json) -> Vec<ParamDoc> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map_or(Vec::new(), |r| r.iter().filter_map(Json::as_str).collect());
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, prop)| ParamDoc {
            name: name.clone(),
            kind: type_of(prop, schema),
            required: required.contains(&name.as_str()),
            default: prop.get("default").map(Json::to_string),
            description: prop["description"]
                .as_str()
                .unwrap_or_default()
                .replace('\n', " "),
        })
        .collect()
}

fn type_of(prop: &Json, root: &Json) -> String {
    if let Some(reference) = prop["$ref"].as_str() {
        let target = root
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or(&Json::Null);
        return type_of(target, root);
    }
    if let Some(value) = prop.get("const") {
        return value.to_string();
    }
    if let Some(any) = prop["anyOf"].as_array().or(prop["oneOf"].as_array()) {
        let mut kinds: Vec<String> = Vec::new();
        for kind in any.iter().map(|p| type_of(p, root)) {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        return kinds.join(" | ");
    }
    if prop["type"] == "object" && prop.get("properties").is_some() {
        return "map".to_string();
    }
    match &prop["type"] {
        Json::String(t) if t == "object" && prop.get("additionalProperties").is_some() => {
            format!("map of {}", type_of(&prop["additionalProperties"], root))
        }
        Json::String(t) if t == "array" => format!("list of {}", type_of(&prop["items"], root)),
        Json::String(t) => t.clone(),
        Json::Array(ts) => ts
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ if prop.get("enum").is_some() => prop["enum"].as_array().map_or(String::new(), |v| {
            v.iter()
                .map(Json::to_string)
                .collect::<Vec<_>>()
                .join(" | ")
        }),
        _ => "any".to_string(),
    }
}

/// Escapes `|` so text stays inside one Markdown table cell.
fn table_cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// Markdown reference of the whole library (the README's node reference and `flow nodes --markdown`).
pub fn markdown_reference(registry: &Registry) -> String {
    let mut out = String::new();
    for node in registry.iter() {
        out.push_str(&format!(
            "### `{}` (version {})\n\n{}\n\n",
            node.type_name(),
            node.version(),
            node.description()
        ));
        out.push_str(
            "| param | type | required | default | description |\n|---|---|---|---|---|\n",
        );
        for p in param_docs(&node.params_schema().to_value()) {
            let default = p.default.map(|d| format!("`{d}`")).unwrap_or_default();
            let required = if p.required { "yes" } else { "no" };
            out.push_str(&format!(
                "| `{}` | {} | {required} | {} | {} |\n",
                p.name,
                table_cell(&p.kind),
                table_cell(&default),
                table_cell(&p.description)
            ));
        }
        out.push_str("\n| output | description |\n|---|---|\n");
        for o in node.outputs() {
            out.push_str(&format!("| `{}` | {} |\n", o.name, o.description));
        }
        out.push('\n');
    }
    out
}
