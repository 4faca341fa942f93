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

/// Mistral-Instruct v0.1's template: `<s>[INST] user [/INST]answer</s>`; a system message leads
/// the first user turn.
pub const MISTRAL: &str = "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {% if loop.index0 == 1 and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}{{ m.content }} [/INST]{% elif m.role == 'assistant' %}{{ m.content }}{{ eos_token }}{% elif m.role != 'system' %}{{ raise_exception('roles must be system, user or assistant') }}{% endif %}{% endfor %}";

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

/// The prompt of a conversation without one: the leading messages chosen and rejected share
/// (TRL's `extract_prompt`), and what follows them in each.
pub fn implicit_prompt(
    chosen: &[Message],
    rejected: &[Message],
) -> (Vec<Message>, Vec<Message>, Vec<Message>) {
    let shared = chosen
        .iter()
        .zip(rejected)
        .take_while(|(a, b)| a == b)
        .count();
    (
        chosen[..shared].to_vec(),
        chosen[shared..].to_vec(),
        rejected[shared..].to_vec(),
    )
}
