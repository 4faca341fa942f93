//! Chat templates as transformers renders them (`apply_chat_template`): the model's own Jinja
//! template (`chat_template.jinja`, where transformers 5 saves it, else `chat_template` in
//! `tokenizer_config.json`) or a built-in, rendered by minijinja in the environment transformers
//! uses (`trim_blocks`, `lstrip_blocks`, loop controls, Python string methods,
//! `raise_exception`, `strftime_now`), with the tokenizer's special tokens (`bos_token`,
//! `eos_token`, `unk_token`, `pad_token`) as variables — undefined where the tokenizer has none.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result, io_at};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Mistral-Instruct v0.1's template: `<s>[INST] user [/INST]answer</s>`, user and assistant
/// turns strictly alternating from a user turn (as Mistral's own template demands); one leading
/// system message is written before the first user turn's text, separated by a blank line.
pub const MISTRAL: &str = concat!(
    "{{ bos_token }}",
    "{% if messages and messages[0].role == 'system' %}",
    "{% set system = messages[0].content %}{% set turns = messages[1:] %}",
    "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}",
    "{% for m in turns %}",
    "{% if m.role not in ['user', 'assistant'] %}",
    "{{ raise_exception('after one optional leading system message, roles must be user or assistant (got ' ~ m.role ~ ')') }}",
    "{% elif (m.role == 'user') != (loop.index0 % 2 == 0) %}",
    "{{ raise_exception('conversation roles must alternate user/assistant/user/assistant/...') }}",
    "{% elif m.role == 'user' %}[INST] {% if loop.first and system is not none %}{{ system }}\n\n{% endif %}{{ m.content }} [/INST]",
    "{% else %}{{ m.content }}{{ eos_token }}{% endif %}",
    "{% endfor %}"
);

/// ChatML: `<|im_start|>role\ncontent<|im_end|>\n`, no BOS.
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A compiled template with the special tokens it may use.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    specials: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("specials", &self.specials)
            .finish()
    }
}

/// A special token of `tokenizer_config.json`: a string, or an added-token object's `content`.
pub fn special_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match &config[key] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    /// Compiles `source` with the special tokens named in `config` (a `tokenizer_config.json`).
    pub fn compile(source: &str, config: &serde_json::Value) -> Result<ChatTemplate, String> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_function("strftime_now", |format: String| -> String {
            jiff::Zoned::now().strftime(&format).to_string()
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| format!("chat template does not compile: {e}"))?;
        let specials = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|key| special_token(config, key).map(|token| (key, token)))
            .collect();
        Ok(ChatTemplate { env, specials })
    }

    /// The template of a tokenizer directory (or a `tokenizer_config.json` path), if it has one:
    /// `chat_template.jinja` first (transformers 5), then `chat_template` in
    /// `tokenizer_config.json` (a string, or a list of named templates: `default`).
    pub fn of_tokenizer(path: &Path) -> Result<Option<ChatTemplate>> {
        let (dir, config_file) = if path.is_dir() {
            (path.to_path_buf(), path.join("tokenizer_config.json"))
        } else {
            let dir = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
            (dir, path.to_path_buf())
        };
        let config = match std::fs::read_to_string(&config_file) {
            Ok(text) => serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
                ModelError::Invalid {
                    path: config_file.clone(),
                    message: format!("not JSON: {e}"),
                }
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(io_at(&jinja))?)
        } else {
            match &config["chat_template"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(String::from),
                _ => None,
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let at = if jinja.is_file() { jinja } else { config_file };
        ChatTemplate::compile(&source, &config)
            .map(Some)
            .map_err(|message| ModelError::Invalid { path: at, message })
    }

    /// Renders a conversation, with the assistant's turn opened when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        if messages.is_empty() {
            return Err("cannot render an empty conversation".into());
        }
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let mut context: std::collections::BTreeMap<&str, minijinja::Value> = self
            .specials
            .iter()
            .map(|(key, token)| (*key, minijinja::Value::from(token.as_str())))
            .collect();
        context.insert(
            "messages",
            minijinja::Value::from(minijinja::value::Serde(messages)),
        );
        context.insert(
            "add_generation_prompt",
            minijinja::Value::from(add_generation_prompt),
        );
        template
            .render(context)
            .map_err(|e| format!("the chat template failed: {e}"))
    }

    /// The texts TRL's `maybe_apply_chat_template` makes of a conversational pair: the prompt
    /// rendered with the generation prompt, cut to what it shares with both full conversations,
    /// and each answer as the rest of its full conversation.
    pub fn render_pair(
        &self,
        prompt: &[Message],
        chosen: &[Message],
        rejected: &[Message],
    ) -> Result<(String, String, String), String> {
        if prompt.is_empty() {
            return Err("the conversation has no prompt messages".into());
        }
        let alone = self.render(prompt, true)?;
        let full_chosen = self.render(&[prompt, chosen].concat(), false)?;
        let full_rejected = self.render(&[prompt, rejected].concat(), false)?;
        let shared = common_chars(&alone, &full_chosen).min(common_chars(&alone, &full_rejected));
        Ok((
            alone[..shared].to_string(),
            full_chosen[shared..].to_string(),
            full_rejected[shared..].to_string(),
        ))
    }
}

/// The byte length of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_chars(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// Prompt, chosen answer and rejected answer messages.
pub type SplitConversation = (Vec<Message>, Vec<Message>, Vec<Message>);

/// The prompt of a conversation without one, as TRL's `extract_prompt` splits it: the leading
/// messages chosen and rejected share, and what follows them in each; where one conversation
/// is the other's start, the shorter one's last message is answer, not prompt (TRL's index
/// `min(len) - 1`).
///
/// Errors: an empty conversation, or answers that start with a turn other than `assistant`
/// (the conversations differ first in a user or system message, which no template can render
/// as a reply).
pub fn implicit_prompt(
    chosen: &[Message],
    rejected: &[Message],
) -> Result<SplitConversation, String> {
    let shortest = chosen.len().min(rejected.len());
    if shortest == 0 {
        return Err("chosen and rejected must each hold at least one message".into());
    }
    let shared = chosen
        .iter()
        .zip(rejected)
        .take_while(|(a, b)| a == b)
        .count()
        .min(shortest - 1);
    for (name, answer) in [("chosen", &chosen[shared]), ("rejected", &rejected[shared])] {
        if answer.role != "assistant" {
            return Err(format!(
                "without a prompt column the prompt is the messages chosen and rejected share; after {shared} shared message(s) {name} goes on with a `{}` message, but an answer must start with an `assistant` message",
                answer.role
            ));
        }
    }
    Ok((
        chosen[..shared].to_vec(),
        chosen[shared..].to_vec(),
        rejected[shared..].to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistral() -> ChatTemplate {
        let specials = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"});
        ChatTemplate::compile(MISTRAL, &specials).unwrap()
    }

    fn talk(turns: &[(&str, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message::new(r, c)).collect()
    }

    #[test]
    fn the_mistral_template_takes_one_leading_system_message_and_alternating_turns() {
        let rendered = mistral()
            .render(
                &talk(&[
                    ("system", "Sei kurz."),
                    ("user", "Hallo?"),
                    ("assistant", "Tag."),
                    ("user", "Und?"),
                ]),
                true,
            )
            .unwrap();
        assert_eq!(
            rendered,
            "<s>[INST] Sei kurz.\n\nHallo? [/INST]Tag.</s>[INST] Und? [/INST]"
        );
        for bad in [
            talk(&[("user", "a"), ("user", "b")]),
            talk(&[("assistant", "a")]),
        ] {
            let error = mistral().render(&bad, true).unwrap_err();
            assert!(error.contains("must alternate"), "{bad:?}: {error}");
        }
        for bad in [
            talk(&[("user", "a"), ("system", "b")]),
            talk(&[("system", "a"), ("system", "b"), ("user", "c")]),
        ] {
            let error = mistral().render(&bad, true).unwrap_err();
            assert!(
                error.contains("must be user or assistant (got system)"),
                "{bad:?}: {error}"
            );
        }
        let error = mistral()
            .render(&talk(&[("user", "a"), ("tool", "b")]), false)
            .unwrap_err();
        assert!(error.contains("(got tool)"), "{error}");
    }

    #[test]
    fn an_implicit_prompt_is_split_where_trl_splits_it() {
        let chosen = talk(&[("user", "q"), ("assistant", "gut")]);
        let rejected = talk(&[("user", "q"), ("assistant", "schlecht")]);
        assert_eq!(
            implicit_prompt(&chosen, &rejected).unwrap(),
            (
                talk(&[("user", "q")]),
                talk(&[("assistant", "gut")]),
                talk(&[("assistant", "schlecht")])
            )
        );
        // Identical conversations: the last message is the answer (TRL's `min(len) - 1`).
        assert_eq!(
            implicit_prompt(&chosen, &chosen).unwrap().1,
            talk(&[("assistant", "gut")])
        );
        // One conversation the start of the other: the shorter one's last message is its answer.
        let longer = talk(&[
            ("user", "q"),
            ("assistant", "gut"),
            ("user", "mehr?"),
            ("assistant", "ja"),
        ]);
        let (prompt, a, b) = implicit_prompt(&chosen, &longer).unwrap();
        assert_eq!((prompt.len(), a.len(), b.len()), (1, 1, 3));
        let differ_at_user = talk(&[("user", "anders"), ("assistant", "gut")]);
        let error = implicit_prompt(&chosen, &differ_at_user).unwrap_err();
        assert!(error.contains("goes on with a `user` message"), "{error}");
        assert!(
            implicit_prompt(&[], &chosen)
                .unwrap_err()
                .contains("at least one message")
        );
    }
}
