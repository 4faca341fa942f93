//! Chat templates for conversational preference data: the model's own `chat_template` from
//! `tokenizer_config.json` (Jinja, rendered with minijinja and its Python-compatible methods) or
//! a built-in (`mistral`, `chatml`). Pairs are rendered as TRL's `maybe_apply_chat_template`
//! does: the prompt with the generation prompt, each answer as what the full conversation adds
//! after it; without an explicit prompt, the messages chosen and rejected share are the prompt.

use flow_engine::node::NodeError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Built-in templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// Mistral-Instruct: `[INST] user [/INST]answer</s>` (a system message leads the first user turn).
    Mistral,
    /// ChatML: `<|im_start|>role\ncontent<|im_end|>\n`.
    Chatml,
}

/// A built-in template name, or a tokenizer directory / `tokenizer_config.json` with a `chat_template`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "`mistral`, `chatml`, or the path of a tokenizer directory or tokenizer_config.json"
)]
pub enum ChatTemplateParam {
    /// A built-in.
    Builtin(Builtin),
    /// A model's template.
    Path(PathBuf),
}

const MISTRAL: &str = "{% for m in messages %}{% if m.role == 'user' %}[INST] {% if loop.index0 == 1 and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}{{ m.content }} [/INST]{% elif m.role == 'assistant' %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}";
const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A compiled template with the special tokens it may use.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn special(config: &serde_json::Value, key: &str, default: &str) -> String {
    match &config[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    }
}

impl ChatTemplate {
    /// Loads a built-in or a model's template.
    pub fn load(param: &ChatTemplateParam) -> Result<ChatTemplate, NodeError> {
        let (source, config) = match param {
            ChatTemplateParam::Builtin(Builtin::Mistral) => {
                (MISTRAL.to_string(), serde_json::Value::Null)
            }
            ChatTemplateParam::Builtin(Builtin::Chatml) => {
                (CHATML.to_string(), serde_json::Value::Null)
            }
            ChatTemplateParam::Path(path) => model_template(path)?,
        };
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| NodeError::new(format!("chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: special(&config, "bos_token", "<s>"),
            eos_token: special(&config, "eos_token", "</s>"),
        })
    }

    /// Renders a conversation.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| format!("chat template failed: {e}"))
    }

    /// `(prompt, chosen, rejected)` texts of a conversational pair.
    pub fn render_pair(
        &self,
        prompt: Option<Vec<Message>>,
        chosen: Vec<Message>,
        rejected: Vec<Message>,
    ) -> Result<(String, String, String), String> {
        let (prompt, chosen, rejected) = match prompt {
            Some(prompt) => (prompt, chosen, rejected),
            None => {
                let shared = chosen
                    .iter()
                    .zip(&rejected)
                    .take_while(|(a, b)| a == b)
                    .count();
                (
                    chosen[..shared].to_vec(),
                    chosen[shared..].to_vec(),
                    rejected[shared..].to_vec(),
                )
            }
        };
        if prompt.is_empty() {
            return Err("the conversation has no prompt messages".into());
        }
        let prompt_text = self.render(&prompt, true)?;
        let answer = |answer: Vec<Message>| -> Result<String, String> {
            let full = self.render(&[prompt.clone(), answer].concat(), false)?;
            full.strip_prefix(&prompt_text).map(str::to_string).ok_or_else(|| {
                "the chat template renders the prompt differently alone than followed by an answer".to_string()
            })
        };
        Ok((prompt_text.clone(), answer(chosen)?, answer(rejected)?))
    }
}

/// `chat_template` (a string, or a list of named templates: `default`) of a model's tokenizer config.
fn model_template(path: &Path) -> Result<(String, serde_json::Value), NodeError> {
    let file = crate::preference::file_in(path, "tokenizer_config.json");
    let text = std::fs::read_to_string(&file)
        .map_err(|e| NodeError::new(format!("{}: {e}", file.display())))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| NodeError::new(format!("{}: not JSON: {e}", file.display())))?;
    let template = match &config["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(String::from),
        _ => None,
    };
    let template = template.ok_or_else(|| {
        NodeError::new(format!(
            "{}: no `chat_template`; use a built-in (`chat_template: mistral` or `chatml`)",
            file.display()
        ))
    })?;
    Ok((template, config))
}
