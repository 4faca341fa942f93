//! Workflow params: defaults from the file, typed overrides from `--set NAME=VALUE`.

use serde_json::Value as Json;
use std::collections::BTreeMap;

use crate::diagnostic::{Diagnostic, Span};
use crate::workflow::reference::interpolate;
use crate::workflow::yaml::SpannedMap;
use crate::workflow::yaml::Yaml;

/// Parses `NAME=VALUE`; VALUE is read as YAML, so `0.2` is a number, `true` a bool,
/// `[1, 2]` a list and `{a: 1}` a map; anything else is a string.
pub fn parse_override(text: &str) -> Result<(String, Json), String> {
    let (name, raw) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid --set `{text}`: expected NAME=VALUE"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!(
            "invalid --set `{text}`: the name before `=` is empty"
        ));
    }
    let value = if raw.trim().is_empty() {
        Json::String(String::new())
    } else {
        serde_saphyr::from_str::<Json>(raw).unwrap_or_else(|_| Json::String(raw.to_string()))
    };
    Ok((name.to_string(), value))
}

/// The kind of a JSON value, for type checks and messages.
pub fn kind_of(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a bool",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

/// The workflow's effective params: defaults with `--set` overrides applied, and every problem
/// found (the params are still usable for checking the rest of the file when there are some).
/// An override must name a declared param and keep its type (a null default takes anything).
pub fn effective_params(
    defaults: &SpannedMap<Yaml>,
    overrides: &[String],
) -> (BTreeMap<String, Json>, Vec<Diagnostic>) {
    let mut errors = Vec::new();
    let mut params = BTreeMap::new();
    for (key, value) in defaults.iter() {
        let field = format!("params.{}", key.value);
        match plain_value(value, &field, "param defaults") {
            Ok(json) => {
                params.insert(key.value.clone(), json);
            }
            Err(mut e) => errors.append(&mut e),
        }
        if !crate::workflow::reference::reference_name_ok(&key.value) {
            errors.push(Diagnostic::at(
                Span::of(&key.referenced),
                field,
                "param names use letters, digits, `_` and `-`",
            ));
        }
    }
    for text in overrides {
        match parse_override(text) {
            Ok((name, value)) => match check_override(&params, &name, &value) {
                Ok(()) => {
                    params.insert(name, value);
                }
                Err((message, hint)) => {
                    errors.push(
                        Diagnostic::general(format!("invalid --set `{text}`: {message}"))
                            .with_optional_hint(hint),
                    );
                }
            },
            Err(message) => errors.push(Diagnostic::general(message)),
        }
    }
    (params, errors)
}

/// A YAML value that may hold no `${…}` reference (`what` names such values in the error).
pub fn plain_value(
    value: &serde_saphyr::Spanned<Yaml>,
    field: &str,
    what: &str,
) -> Result<Json, Vec<Diagnostic>> {
    let mut no_references = |_: &crate::workflow::reference::Reference| -> Result<Json, String> {
        Err(format!(
            "{what} are plain values: references are not allowed here"
        ))
    };
    interpolate(value, field, &mut no_references)
}

/// Whether `value` may override param `name`: the param must be declared and keep its type
/// (a null default takes anything). Errors carry the message and, where one helps, a hint.
pub fn check_override(
    declared: &BTreeMap<String, Json>,
    name: &str,
    value: &Json,
) -> Result<(), (String, Option<String>)> {
    match declared.get(name) {
        None => {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            let listed = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            Err((
                format!("the workflow declares no param `{name}` (declared: {listed})"),
                crate::diagnostic::did_you_mean(name, names),
            ))
        }
        Some(default) if !default.is_null() && kind_of(default) != kind_of(value) => Err((
            format!(
                "param `{name}` is {} (default {default}), got {}",
                kind_of(default),
                kind_of(value)
            ),
            None,
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_typed() {
        assert_eq!(
            parse_override("beta=0.2").unwrap(),
            ("beta".into(), Json::from(0.2))
        );
        assert_eq!(parse_override("on=true").unwrap().1, Json::Bool(true));
        assert_eq!(
            parse_override("xs=[1, 2]").unwrap().1,
            serde_json::json!([1, 2])
        );
        assert_eq!(
            parse_override("m={a: 1}").unwrap().1,
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            parse_override("s=hello world").unwrap().1,
            Json::from("hello world")
        );
        assert!(parse_override("novalue").is_err());
        assert!(parse_override("=3").is_err());
    }
}
