//! Multiple-choice tasks for `evaluate`, scored as lm-evaluation-harness 0.4's `loglikelihood`
//! requests are (`--model hf`): each choice is the continuation `target_delimiter + choice`
//! after the few-shot context, tokenized as `encode(context + continuation)` split at the
//! length of `encode(context)` (trailing whitespace of the context moved to the continuation
//! first), the pair cut from the left to the model's context. Rows are read in the formats of
//! the harness's German tasks ([`formats`]), shots drawn as it draws them ([`fewshot`]), and
//! `acc`, `acc_norm`, `acc_bytes`, `mc1`, `mc2` computed as its `process_results` does
//! ([`metrics`]).

pub mod fewshot;
pub mod formats;
pub mod metrics;
pub mod python_random;

use flow_engine::node::NodeError;
use flow_model::scoring::Sequence;
use flow_model::tokenize::PreferenceTokenizer;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use self::fewshot::{ContextBuilder, FewShot};
use self::formats::{Doc, Metric, Preset, Sampler};

/// A `tasks:` entry: a JSONL path (`{question, choices, answer}` rows, zero-shot) or a spec.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(untagged)]
pub enum TaskParam {
    /// A JSONL file of `{question, choices, answer}` rows.
    Path(PathBuf),
    /// A task spec.
    Spec(TaskSpec),
}

/// A multiple-choice task as lm-evaluation-harness runs it.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// JSONL file of the questions, in the preset's row format.
    pub path: PathBuf,
    /// Name in `eval.json` and the report (default: the file name without extension).
    #[serde(default)]
    pub name: Option<String>,
    /// Row format and harness task: `plain`, `arc_de`, `hellaswag_de`, `m_mmlu_de`, `truthfulqa_de_mc1`, `truthfulqa_de_mc2`, `belebele_deu_Latn`, `arc`, `hellaswag`, `mmlu`, `truthfulqa_mc1`, `truthfulqa_mc2`.
    #[serde(default)]
    pub preset: Preset,
    /// Examples before each question (the harness's `--num_fewshot`).
    #[serde(default)]
    pub num_fewshot: usize,
    /// Seed of the random few-shot draws (the harness's `fewshot_random_seed`, 1234).
    #[serde(default = "default_fewshot_seed")]
    pub fewshot_seed: u64,
    /// JSONL file the examples come from (the harness's training or few-shot split); default: the questions themselves, each kept out of its own examples.
    #[serde(default)]
    pub fewshot_path: Option<PathBuf>,
    /// `random` or `first_n` (default: the preset's, as its harness task has it).
    #[serde(default)]
    pub fewshot_sampler: Option<Sampler>,
    /// Jinja template of the question text over the row's own fields (as in the file), e.g. `"Frage: {{question}}\nAntwort:"` (default: the preset's; `{{question}}` for `plain`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Text written before the examples, with no separator (e.g. MMLU's subject line ending in a blank line): a field of the row, or a Jinja template over the row's fields (as the harness resolves it).
    #[serde(default)]
    pub description: String,
    /// Between a question and its answer.
    #[serde(default = "default_target_delimiter")]
    pub target_delimiter: String,
    /// After each example.
    #[serde(default = "default_fewshot_delimiter")]
    pub fewshot_delimiter: String,
    /// Metrics to report: `acc`, `acc_norm`, `acc_bytes`, `mc1`, `mc2` (default: the preset's).
    #[serde(default)]
    pub metrics: Option<Vec<Metric>>,
}

impl<'de> Deserialize<'de> for TaskParam {
    /// A string is a path; a mapping is a spec, whose own errors (unknown or missing fields,
    /// wrong types) are kept.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TaskParam;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a task file path or a task spec `{path, preset?, num_fewshot?, …}`")
            }

            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<TaskParam, E> {
                Ok(TaskParam::Path(PathBuf::from(path)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TaskParam, A::Error> {
                let spec =
                    TaskSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(TaskParam::Spec(spec))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn default_fewshot_seed() -> u64 {
    1234
}

fn default_target_delimiter() -> String {
    " ".into()
}

fn default_fewshot_delimiter() -> String {
    "\n\n".into()
}

impl TaskParam {
    /// The entry as a spec (a bare path is a zero-shot `plain` task).
    pub fn spec(&self) -> TaskSpec {
        match self {
            TaskParam::Spec(spec) => spec.clone(),
            TaskParam::Path(path) => TaskSpec {
                path: path.clone(),
                name: None,
                preset: Preset::Plain,
                num_fewshot: 0,
                fewshot_seed: default_fewshot_seed(),
                fewshot_path: None,
                fewshot_sampler: None,
                prompt: None,
                description: String::new(),
                target_delimiter: default_target_delimiter(),
                fewshot_delimiter: default_fewshot_delimiter(),
                metrics: None,
            },
        }
    }

    /// The files the entry reads.
    pub fn files(&self) -> Vec<PathBuf> {
        let spec = self.spec();
        std::iter::once(spec.path)
            .chain(spec.fewshot_path)
            .collect()
    }
}

impl TaskSpec {
    /// Checks what can be checked without reading the files: the field at fault and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(("name", "must not be empty".into()));
        }
        if self.metrics.as_ref().is_some_and(Vec::is_empty) {
            return Err(("metrics", "must name at least one metric".into()));
        }
        let preset = metrics::preset_name(self.preset);
        if self.num_fewshot > 0 && self.preset.zero_shot_only() {
            return Err((
                "num_fewshot",
                format!("the harness's {preset} is zero-shot (its YAML pins num_fewshot: 0)"),
            ));
        }
        if self.num_fewshot > 0
            && self.preset.shots_from_training_split()
            && self.fewshot_path.is_none()
        {
            return Err((
                "fewshot_path",
                format!(
                    "the harness's {preset} draws its shots from the training (dev) split: give that file"
                ),
            ));
        }
        Ok(())
    }

    /// The task's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.path
                .file_stem()
                .map_or("task".into(), |s| s.to_string_lossy().to_string())
        })
    }

    /// The metrics reported.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut metrics = self
            .metrics
            .clone()
            .unwrap_or_else(|| self.preset.defaults().metrics.to_vec());
        metrics.sort();
        metrics.dedup();
        metrics
    }
}

/// A task ready to score: one sequence per choice, questions one after another.
pub struct Task {
    /// Its name.
    pub name: String,
    /// What it was made from.
    pub spec: TaskSpec,
    /// Each question's choices (text), answer and mc2 labels.
    pub docs: Vec<Doc>,
    /// One sequence per choice, questions one after another.
    pub sequences: Vec<Sequence>,
    /// Where each sequence comes from (`file:line choice k`), for errors.
    pub origins: Vec<String>,
}

/// Reads every task for a model whose context holds `context` tokens.
///
/// Errors (`file:line`, field): a row its preset cannot read, fewer than two choices, an answer
/// out of range, a metric the rows cannot give (`mc2` without labels), a few-shot pool too
/// small for the draw, a choice that adds no token, a continuation longer than the context.
pub fn load_tasks(
    params: &[TaskParam],
    tokenizer: &PreferenceTokenizer,
    context: usize,
) -> Result<Vec<Task>, NodeError> {
    params
        .iter()
        .map(|p| load_task(p.spec(), tokenizer, context))
        .collect()
}

fn load_task(
    spec: TaskSpec,
    tokenizer: &PreferenceTokenizer,
    context_size: usize,
) -> Result<Task, NodeError> {
    let prompt_env = prompt_environment();
    let prompt = spec
        .prompt
        .as_deref()
        .map(|source| prompt_env.template_from_str(source))
        .transpose()
        .map_err(|e| {
            NodeError::new(format!("{}: the prompt template: {e}", spec.path.display()))
        })?;
    let (docs, lines) = read_docs(&spec.path, spec.preset, prompt.as_ref())?;
    check_metrics(&spec, &docs, &lines)?;
    let pool = match &spec.fewshot_path {
        Some(path) => Some(read_docs(path, spec.preset, prompt.as_ref())?.0),
        None => None,
    };
    let description = prompt_env
        .template_from_str(&spec.description)
        .map_err(|e| {
            NodeError::new(format!(
                "{}: the description template: {e}",
                spec.path.display()
            ))
        })?;
    let sampler = spec
        .fewshot_sampler
        .unwrap_or(spec.preset.defaults().sampler);
    let mut builder = ContextBuilder::new(
        FewShot {
            n: spec.num_fewshot,
            sampler,
            pool: pool.as_deref().unwrap_or(&docs),
            exclude_question: pool.is_none() || spec.preset.always_excludes_the_question(),
            target_delimiter: &spec.target_delimiter,
            fewshot_delimiter: &spec.fewshot_delimiter,
        },
        spec.fewshot_seed,
    );
    let at = |line: usize| format!("{}:{line}", spec.path.display());
    let mut sequences = Vec::new();
    let mut origins = Vec::new();
    for (doc, &line) in docs.iter().zip(&lines) {
        let description = resolve_description(&spec.description, &description, doc)
            .map_err(|e| NodeError::new(format!("{}: {e}", at(line))))?;
        let context = builder
            .context(doc, &description)
            .map_err(|e| NodeError::new(format!("{}: {e}", at(line))))?;
        for (k, choice) in doc.choices.iter().enumerate() {
            let continuation = format!("{}{choice}", spec.target_delimiter);
            let sequence =
                request(tokenizer, &context, &continuation, context_size).map_err(|e| {
                    NodeError::new(format!(
                        "{}: choice {} ({:?}): {e}",
                        at(line),
                        k + 1,
                        excerpt(choice)
                    ))
                })?;
            sequences.push(sequence);
            origins.push(format!("{} choice {}", at(line), k + 1));
        }
    }
    Ok(Task {
        name: spec.name(),
        spec,
        docs,
        sequences,
        origins,
    })
}

/// The first 40 characters of `text` (for errors), `…` where cut.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The harness's `resolve_field` for a description: the row's field of that name, else the
/// text as a template over the row.
fn resolve_description(
    source: &str,
    template: &minijinja::Template,
    doc: &Doc,
) -> Result<String, String> {
    match doc.row.get(source) {
        Some(Json::String(text)) => Ok(text.clone()),
        Some(other) => Ok(other.to_string()),
        None => template
            .render(minijinja::Value::from(minijinja::value::Serde(&doc.row)))
            .map_err(|e| format!("the description template failed: {e}")),
    }
}

/// The harness's `regex_replace` filter (`re.sub(pattern, repl, string, count)`; `\1` in
/// `repl` is a group).
fn regex_replace(
    text: String,
    pattern: String,
    replacement: String,
    count: Option<usize>,
) -> Result<String, minijinja::Error> {
    let regex = regex::Regex::new(&pattern).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    static GROUP: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let group = GROUP.get_or_init(|| regex::Regex::new(r"\\(\d+)").expect("a valid regex"));
    let escaped = replacement.replace('$', "$$");
    let template = group.replace_all(&escaped, "$${${1}}");
    Ok(regex
        .replacen(&text, count.unwrap_or(0), template.as_ref())
        .into_owned())
}

/// The Jinja environment of `prompt` templates: the harness's (`StrictUndefined`, trailing
/// newlines kept, Python string methods, `regex_replace`).
fn prompt_environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.add_filter("regex_replace", regex_replace);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// Every row of a JSONL task file as a doc, with its line number.
fn read_docs(
    path: &Path,
    preset: Preset,
    prompt: Option<&minijinja::Template>,
) -> Result<(Vec<Doc>, Vec<usize>), NodeError> {
    let at = |line: usize, msg: &dyn std::fmt::Display| {
        NodeError::new(format!("{}:{line}: {msg}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| at(0, &e))?;
    let (mut docs, mut lines) = (Vec::new(), Vec::new());
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| at(n + 1, &e))?;
        let line = line.trim_start_matches('\u{feff}');
        if line.trim().is_empty() {
            continue;
        }
        let row: Map<String, Json> = match serde_json::from_str(line) {
            Ok(Json::Object(row)) => row,
            Ok(_) => return Err(at(n + 1, &"expected a JSON object")),
            Err(e) => return Err(at(n + 1, &format!("bad JSON: {e}"))),
        };
        docs.push(formats::doc(preset, row, prompt).map_err(|e| at(n + 1, &e))?);
        lines.push(n + 1);
    }
    if docs.is_empty() {
        return Err(at(0, &"no questions"));
    }
    Ok((docs, lines))
}

/// Refuses metrics the rows cannot give.
fn check_metrics(spec: &TaskSpec, docs: &[Doc], lines: &[usize]) -> Result<(), NodeError> {
    if spec.metrics().contains(&Metric::Mc2)
        && let Some(i) = docs.iter().position(|d| d.labels.is_none())
    {
        return Err(NodeError::new(format!(
            "{}:{}: metric mc2 needs which choices are true (`labels`, or a truthfulqa mc2 preset)",
            spec.path.display(),
            lines[i]
        )));
    }
    Ok(())
}

/// One loglikelihood request as the harness's `HFLM` builds it: the sequence to score and where
/// the continuation starts.
pub fn request(
    tokenizer: &PreferenceTokenizer,
    context: &str,
    continuation: &str,
    max_length: usize,
) -> Result<Sequence, String> {
    let (context_ids, continuation_ids) = encode_pair(tokenizer, context, continuation);
    if continuation_ids.is_empty() {
        return Err("the continuation adds no token".into());
    }
    if continuation_ids.len() > max_length {
        return Err(format!(
            "the continuation is {} tokens; the model's context is {max_length}",
            continuation_ids.len()
        ));
    }
    // The harness feeds `(context + continuation)[-(max_length + 1):][:-1]`: the same
    // predictions as scoring the last `max_length + 1` tokens.
    let mut ids = [context_ids, continuation_ids.clone()].concat();
    let cut = ids.len().saturating_sub(max_length + 1);
    ids.drain(..cut);
    Ok(Sequence {
        completion_start: ids.len() - continuation_ids.len(),
        ids,
    })
}

/// `_encode_pair` (`lm_eval/api/model.py`): the context's trailing whitespace moved to the
/// continuation, the continuation's ids those of `encode(context + continuation)` past the
/// length of `encode(context)`; an empty context is the BOS (else EOS) token and the
/// continuation is encoded without special tokens.
pub fn encode_pair(
    tokenizer: &PreferenceTokenizer,
    context: &str,
    continuation: &str,
) -> (Vec<u32>, Vec<u32>) {
    if context.is_empty() {
        let continuation_ids = tokenizer.encode_plain(continuation);
        let prefix = tokenizer.bos_id().unwrap_or(tokenizer.eos_id);
        return match continuation_ids.first() {
            Some(&first) if first == prefix => (vec![first], continuation_ids[1..].to_vec()),
            _ => (vec![prefix], continuation_ids),
        };
    }
    let kept = context.trim_end_matches(formats::is_python_space);
    let moved = format!("{}{continuation}", &context[kept.len()..]);
    let whole = tokenizer.encode(&format!("{kept}{moved}"));
    let context_ids = tokenizer.encode(kept);
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    (context_ids, continuation_ids)
}
