//! The `chat_template` param of `dataset.load`: a built-in (`mistral`, `chatml`) or a tokenizer
//! directory whose template renders conversational rows. The rendering itself is the model
//! crate's ([`flow_model::tokenize::chat`]), shared with the model nodes, so a row renders the
//! same wherever it is tokenized.

use flow_engine::node::NodeError;
use flow_model::tokenize::ChatTemplate;
use flow_model::tokenize::chat::{CHATML, MISTRAL};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Built-in templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// Mistral-Instruct: `<s>[INST] user [/INST]answer</s>` (a system message leads the first user turn).
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

/// Loads the template a param names.
pub fn load(param: &ChatTemplateParam) -> Result<ChatTemplate, NodeError> {
    let builtin = |source: &str| {
        let specials = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"});
        ChatTemplate::compile(source, &specials).map_err(NodeError::new)
    };
    match param {
        ChatTemplateParam::Builtin(Builtin::Mistral) => builtin(MISTRAL),
        ChatTemplateParam::Builtin(Builtin::Chatml) => builtin(CHATML),
        ChatTemplateParam::Path(path) => ChatTemplate::of_tokenizer(path)
            .map_err(|e| NodeError::new(e.to_string()))?
            .ok_or_else(|| {
                NodeError::new(format!(
                    "{}: no chat template (chat_template.jinja or `chat_template` in tokenizer_config.json); use a built-in (`chat_template: mistral` or `chatml`)",
                    path.display()
                ))
            }),
    }
}
