//! `${…}` references inside workflow strings.
//!
//! - `${params.X}` (and `${params.X.key}` into a map): a workflow param.
//! - `${NODE.OUTPUT}`: the path of another node's output artifact; this makes a DAG edge.
//! - `${env.X}`: an environment variable; its value enters the cache key.
//! - `${secret.X}`: an environment variable that never enters a cache key, log, run record or error.
//!
//! A string that is exactly one reference keeps the referenced value's type; otherwise
//! values are spliced into the text. `$${` writes a literal `${`, and `${NAME}` without a dot
//! is left alone, so shell variables in `run:` lines keep working.

use serde_json::Value as Json;
use serde_saphyr::Spanned;
use std::fmt;

use crate::diagnostic::{Diagnostic, Span};
use crate::workflow::yaml::Yaml;

/// What a `${…}` points at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reference {
    /// `${params.NAME.path…}`.
    Param {
        /// The param's name.
        name: String,
        /// Keys into a map-valued param.
        path: Vec<String>,
    },
    /// `${env.NAME}`.
    Env(String),
    /// `${secret.NAME}`.
    Secret(String),
    /// `${NODE.OUTPUT}`.
    Output {
        /// The producing node's id.
        node: String,
        /// The output's name.
        output: String,
    },
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Param { name, path } if path.is_empty() => write!(f, "${{params.{name}}}"),
            Reference::Param { name, path } => write!(f, "${{params.{name}.{}}}", path.join(".")),
            Reference::Env(name) => write!(f, "${{env.{name}}}"),
            Reference::Secret(name) => write!(f, "${{secret.{name}}}"),
            Reference::Output { node, output } => write!(f, "${{{node}.{output}}}"),
        }
    }
}

/// A piece of a template string.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Ref(Reference),
}

const NAMESPACES: [&str; 3] = ["params.", "env.", "secret."];

/// Splits a string into text and references.
fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('$') {
        literal.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("$${") {
            literal.push_str("${");
            rest = tail;
        } else if let Some(body_and_tail) = after.strip_prefix("${") {
            let Some(end) = body_and_tail.find('}') else {
                if NAMESPACES.iter().any(|ns| body_and_tail.starts_with(ns)) {
                    return Err(format!("unclosed reference `{after}`: expected `}}`"));
                }
                literal.push_str(after);
                rest = "";
                continue;
            };
            let body = &body_and_tail[..end];
            match parse_reference(body)? {
                Some(reference) => {
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Ref(reference));
                }
                None => literal.push_str(&after[..end + 3]),
            }
            rest = &body_and_tail[end + 1..];
        } else {
            literal.push('$');
            rest = &after[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `params.n` → a reference; `HOME` (no dot, a shell variable) → `None`.
fn parse_reference(body: &str) -> Result<Option<Reference>, String> {
    if !body.contains('.') {
        return Ok(None);
    }
    let parts: Vec<&str> = body.split('.').collect();
    if !parts.iter().all(|p| is_identifier(p)) {
        if NAMESPACES.iter().any(|ns| body.starts_with(ns))
            || is_identifier(parts[0]) && parts.len() == 2
        {
            return Err(format!(
                "malformed reference `${{{body}}}`: expected names of letters, digits, `_` or `-`"
            ));
        }
        return Ok(None);
    }
    let name = parts[1].to_string();
    let reference = match parts[0] {
        "params" => Reference::Param {
            name,
            path: parts[2..].iter().map(|s| s.to_string()).collect(),
        },
        _ if parts.len() > 2 => {
            return Err(format!(
                "malformed reference `${{{body}}}`: expected `${{{}.{}}}`",
                parts[0], parts[1]
            ));
        }
        "env" => Reference::Env(name),
        "secret" => Reference::Secret(name),
        node => Reference::Output {
            node: node.to_string(),
            output: name,
        },
    };
    Ok(Some(reference))
}

/// Every reference in a value, with its place and field path, in file order.
pub fn references_in(
    value: &Spanned<Yaml>,
    field: &str,
) -> Vec<Result<(Reference, Span, String), Diagnostic>> {
    let mut found = Vec::new();
    walk_strings(
        value,
        field,
        &mut |text, span, field| match parse_template(text) {
            Ok(pieces) => {
                for piece in pieces {
                    if let Piece::Ref(r) = piece {
                        found.push(Ok((r, span, field.to_string())));
                    }
                }
            }
            Err(message) => found.push(Err(Diagnostic::at(span, field, message))),
        },
    );
    found
}

fn walk_strings(value: &Spanned<Yaml>, field: &str, visit: &mut dyn FnMut(&str, Span, &str)) {
    match &value.value {
        Yaml::Str(text) => visit(text, Span::of(&value.referenced), field),
        Yaml::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_strings(item, &format!("{field}[{i}]"), visit);
            }
        }
        Yaml::Map(map) => {
            for (key, item) in map.iter() {
                walk_strings(item, &format!("{field}.{}", key.value), visit);
            }
        }
        _ => {}
    }
}

/// Resolves one reference to a value, or says why it cannot.
pub type Resolve<'a> = dyn FnMut(&Reference) -> Result<Json, String> + 'a;

/// Converts a spanned YAML value to JSON, replacing references through `resolve`.
/// Every failure is collected, each with its place.
pub fn interpolate(
    value: &Spanned<Yaml>,
    field: &str,
    resolve: &mut Resolve,
) -> Result<Json, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let json = convert(value, field, resolve, &mut errors);
    if errors.is_empty() {
        Ok(json)
    } else {
        Err(errors)
    }
}

fn convert(
    value: &Spanned<Yaml>,
    field: &str,
    resolve: &mut Resolve,
    errors: &mut Vec<Diagnostic>,
) -> Json {
    match &value.value {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Int(i) => Json::from(*i),
        Yaml::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Yaml::Str(text) => match splice(text, resolve) {
            Ok(json) => json,
            Err(message) => {
                errors.push(Diagnostic::at(Span::of(&value.referenced), field, message));
                Json::Null
            }
        },
        Yaml::Seq(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| convert(item, &format!("{field}[{i}]"), resolve, errors))
                .collect(),
        ),
        Yaml::Map(map) => Json::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        k.value.clone(),
                        convert(v, &format!("{field}.{}", k.value), resolve, errors),
                    )
                })
                .collect(),
        ),
    }
}

/// Resolves the references of one string: exactly one reference keeps its type.
fn splice(text: &str, resolve: &mut Resolve) -> Result<Json, String> {
    let pieces = parse_template(text)?;
    if let [Piece::Ref(reference)] = pieces.as_slice() {
        return resolve(reference);
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Ref(r) => out.push_str(&json_to_text(&resolve(&r)?)),
        }
    }
    Ok(Json::String(out))
}

/// How a value reads when spliced into text: strings bare, everything else as JSON.
pub fn json_to_text(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// Whether `name` is usable as a node id or param name (letters, digits, `_`, `-`).
pub fn reference_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(text: &str) -> Vec<Piece> {
        parse_template(text).unwrap()
    }

    #[test]
    fn parses_every_namespace() {
        assert_eq!(
            refs("a ${params.n} ${env.HOME} ${secret.T} ${make.out} ${params.m.k}"),
            vec![
                Piece::Text("a ".into()),
                Piece::Ref(Reference::Param {
                    name: "n".into(),
                    path: vec![]
                }),
                Piece::Text(" ".into()),
                Piece::Ref(Reference::Env("HOME".into())),
                Piece::Text(" ".into()),
                Piece::Ref(Reference::Secret("T".into())),
                Piece::Text(" ".into()),
                Piece::Ref(Reference::Output {
                    node: "make".into(),
                    output: "out".into()
                }),
                Piece::Text(" ".into()),
                Piece::Ref(Reference::Param {
                    name: "m".into(),
                    path: vec!["k".into()]
                }),
            ]
        );
    }

    #[test]
    fn shell_variables_and_escapes_stay_literal() {
        assert_eq!(
            refs("echo ${HOME} $FLOW_OUT $${params.n}"),
            vec![Piece::Text("echo ${HOME} $FLOW_OUT ${params.n}".into())]
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(parse_template("${params.n").is_err());
        assert!(parse_template("${env.A.B}").is_err());
        assert!(parse_template("${params.a b}").is_err());
    }

    #[test]
    fn single_reference_keeps_type_and_splices_otherwise() {
        let mut resolve = |_: &Reference| Ok(Json::from(3));
        assert_eq!(splice("${params.n}", &mut resolve).unwrap(), Json::from(3));
        assert_eq!(
            splice("seq ${params.n}", &mut resolve).unwrap(),
            Json::from("seq 3")
        );
    }
}
