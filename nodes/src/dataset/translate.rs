//! `dataset.translate`: translates chosen fields of every pair through an OpenAI-compatible
//! chat-completions endpoint or DeepL, as the German orca set was made.
//!
//! Every answer is appended to a per-text cache (`translations.jsonl` in the store's
//! `node-cache/dataset.translate/`), keyed by the text, the field, the provider, the model, the
//! instructions and the target language, and flushed as soon as it arrives: a run that is killed
//! and started again (even with other params) never pays for a text twice.

use crate::chat_client::{ClientConfig, ClientError, Provider, TextClient};
use crate::preference::{PairSink, PreferencePair, read_pairs};
use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The node type.
pub struct DatasetTranslate;

/// A field of a preference pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// The system prompt.
    System,
    /// The prompt.
    Prompt,
    /// The preferred answer.
    Chosen,
    /// The worse answer.
    Rejected,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::System => "system",
            Field::Prompt => "prompt",
            Field::Chosen => "chosen",
            Field::Rejected => "rejected",
        }
    }

    fn get(self, pair: &PreferencePair) -> Option<&str> {
        match self {
            Field::System => pair.system.as_deref(),
            Field::Prompt => Some(&pair.prompt),
            Field::Chosen => Some(&pair.chosen),
            Field::Rejected => Some(&pair.rejected),
        }
    }

    fn set(self, pair: &mut PreferencePair, text: String) {
        match self {
            Field::System => pair.system = Some(text),
            Field::Prompt => pair.prompt = text,
            Field::Chosen => pair.chosen = text,
            Field::Rejected => pair.rejected = text,
        }
    }
}

/// What to do with a row whose translation failed after its retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Stop the node with the error.
    #[default]
    Fail,
    /// Leave the row out (counted in `stats.json` as `translation_failed`).
    Drop,
}

fn all_fields() -> Vec<Field> {
    vec![Field::System, Field::Prompt, Field::Chosen, Field::Rejected]
}

fn default_concurrency() -> usize {
    4
}

fn default_retries() -> u32 {
    6
}

fn default_timeout() -> f64 {
    120.0
}

fn default_backoff() -> f64 {
    1.0
}

/// Params of `dataset.translate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TranslateParams {
    /// The preference dataset to translate.
    pub dataset: PathBuf,
    /// Language to translate into: a name for chat models (`German`), a code for DeepL (`DE`).
    pub target_language: String,
    /// Fields to translate.
    #[serde(default = "all_fields")]
    pub fields: Vec<Field>,
    /// `openai` (any chat-completions endpoint) or `deepl`.
    #[serde(default)]
    pub provider: Provider,
    /// Endpoint root: `https://api.openai.com/v1`, a vLLM or llama.cpp server, or `https://api-free.deepl.com`.
    pub base_url: String,
    /// Chat model name (required for `openai`).
    #[serde(default)]
    pub model: Option<String>,
    /// API key, normally `${secret.OPENAI_API_KEY}` or `${secret.DEEPL_API_KEY}`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Instructions for chat models; `{language}` is replaced by `target_language`. The default asks for a faithful translation that keeps formatting, code and names, and nothing else.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Terms and how to translate them, appended to the instructions.
    #[serde(default)]
    pub glossary: BTreeMap<String, String>,
    /// Sampling temperature of chat models.
    #[serde(default)]
    pub temperature: f64,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Request starts per minute (unlimited when unset).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Retries of a request after 429, 5xx, a timeout or a malformed answer.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Seconds before one request times out.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// Seconds before the first retry when the answer has no `Retry-After` (doubled per retry, with jitter).
    #[serde(default = "default_backoff")]
    pub retry_backoff_seconds: f64,
    /// A row whose translation fails after its retries: `fail` the node or `drop` the row.
    #[serde(default)]
    pub on_error: OnError,
}

const DEFAULT_PROMPT: &str = "Translate the user's message into {language}. Keep the meaning, tone, formatting (Markdown, lists, line breaks), code, numbers and names exactly; translate everything else naturally. Answer with the translation only, no comments or quotes.";

impl TranslateParams {
    /// The instructions sent with every text: the prompt, then the glossary.
    fn instructions(&self) -> String {
        let mut text = self
            .system_prompt
            .as_deref()
            .unwrap_or(DEFAULT_PROMPT)
            .replace("{language}", &self.target_language);
        if !self.glossary.is_empty() {
            text.push_str("\n\nGlossary (always translate these terms so):");
            for (term, translation) in &self.glossary {
                text.push_str(&format!("\n- {term} → {translation}"));
            }
        }
        text
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            max_tokens: None,
            provider: self.provider,
            base_url: self.base_url.clone(),
            model: self.model.clone().unwrap_or_default(),
            api_key: self.api_key.clone().filter(|k| !k.is_empty()),
            temperature: self.temperature,
            concurrency: self.concurrency,
            requests_per_minute: self.requests_per_minute,
            max_retries: self.max_retries,
            timeout: Duration::from_secs_f64(self.timeout_seconds),
            backoff_base: Duration::from_secs_f64(self.retry_backoff_seconds),
        }
    }

    /// The cache key of one text: everything that decides its translation.
    fn cache_key(&self, field: Field, text: &str, instructions: &str) -> String {
        let mut hasher = blake3::Hasher::new();
        for part in [
            format!("{:?}", self.provider).as_str(),
            self.model.as_deref().unwrap_or_default(),
            self.target_language.as_str(),
            instructions,
            field.name(),
            text,
        ] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }
}

impl Node for DatasetTranslate {
    type Params = TranslateParams;
    const TYPE: &'static str = "dataset.translate";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Translates chosen fields of a preference dataset into `target_language` through an OpenAI-compatible chat-completions endpoint (instructions with a glossary) or DeepL. Concurrency and requests-per-minute limits, retries with exponential backoff and jitter on 429 / 5xx / timeouts / malformed answers honouring Retry-After, a per-text cache that survives interrupted runs (no text is paid for twice), `on_error: drop|fail`, progress with rows/s and ETA.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "dataset",
        description: "`data.jsonl` with the fields translated (ids kept) and `stats.json`",
    }];

    fn check(params: &TranslateParams) -> Result<(), ParamError> {
        if params.fields.is_empty() {
            return Err(ParamError::at("fields", "name at least one field"));
        }
        if params.provider == Provider::Openai && params.model.as_deref().is_none_or(str::is_empty)
        {
            return Err(ParamError::at("model", "required with provider `openai`"));
        }
        if !params.base_url.starts_with("http://") && !params.base_url.starts_with("https://") {
            return Err(ParamError::at(
                "base_url",
                "expected an http:// or https:// URL",
            ));
        }
        if params.concurrency == 0 {
            return Err(ParamError::at("concurrency", "must be at least 1"));
        }
        if params.requests_per_minute == Some(0) {
            return Err(ParamError::at(
                "requests_per_minute",
                "must be at least 1 (or unset)",
            ));
        }
        if !params.timeout_seconds.is_finite() || params.timeout_seconds <= 0.0 {
            return Err(ParamError::at(
                "timeout_seconds",
                "must be a positive number of seconds",
            ));
        }
        if !params.retry_backoff_seconds.is_finite() || params.retry_backoff_seconds < 0.0 {
            return Err(ParamError::at(
                "retry_backoff_seconds",
                "must be zero or positive",
            ));
        }
        if params.target_language.trim().is_empty() {
            return Err(ParamError::at("target_language", "must not be empty"));
        }
        Ok(())
    }

    async fn run(&self, ctx: NodeContext, params: TranslateParams) -> Result<(), NodeError> {
        let pairs = read_pairs(&params.dataset)?;
        let cache = Arc::new(TranslationCache::open(&ctx.shared_cache(Self::TYPE))?);
        let client =
            TextClient::new(params.client_config()).map_err(|e| NodeError::new(e.message()))?;
        let job = Arc::new(Job {
            instructions: params.instructions(),
            params,
            client,
            cache: cache.clone(),
        });
        let total = pairs.len();
        let mut tasks = tokio::task::JoinSet::new();
        for (index, pair) in pairs.into_iter().enumerate() {
            let job = job.clone();
            tasks.spawn(async move { (index, job.translate_row(pair).await) });
        }
        let mut results: Vec<Option<Result<PreferencePair, ClientError>>> =
            (0..total).map(|_| None).collect();
        let mut done = 0;
        while let Some(joined) = tasks.join_next().await {
            let (index, result) =
                joined.map_err(|e| NodeError::new(format!("translation task failed: {e}")))?;
            if let Err(ClientError::Fatal(message)) = &result {
                tasks.abort_all();
                return Err(NodeError::new(ctx.log().mask(message)));
            }
            results[index] = Some(result);
            done += 1;
            ctx.progress(done as u64, total as u64);
        }
        write_output(&ctx, &job.params, results, &cache)
    }
}

/// What every row task shares.
struct Job {
    params: TranslateParams,
    instructions: String,
    client: TextClient,
    cache: Arc<TranslationCache>,
}

impl Job {
    /// Translates the chosen fields of one pair (cached texts are not sent).
    async fn translate_row(&self, mut pair: PreferencePair) -> Result<PreferencePair, ClientError> {
        for &field in &self.params.fields {
            let Some(text) = field.get(&pair).filter(|t| !t.trim().is_empty()) else {
                continue;
            };
            let key = self.params.cache_key(field, text, &self.instructions);
            // One request per text even when rows share it (a common system prompt).
            let key_lock = self.cache.key_lock(&key);
            let _held = key_lock.lock().await;
            let translated = match self.cache.get(&key) {
                Some(hit) => hit,
                None => {
                    let answer = self
                        .client
                        .complete(&self.instructions, text, &self.params.target_language)
                        .await
                        .map_err(|e| match e {
                            ClientError::Failed(m) => ClientError::Failed(format!(
                                "pair {} field {}: {m}",
                                pair.id,
                                field.name()
                            )),
                            fatal => fatal,
                        })?;
                    self.cache.put(&key, &answer).map_err(|e| {
                        ClientError::Fatal(format!("cannot write the translation cache: {e}"))
                    })?;
                    answer
                }
            };
            field.set(&mut pair, translated);
        }
        Ok(pair)
    }
}

fn write_output(
    ctx: &NodeContext,
    params: &TranslateParams,
    results: Vec<Option<Result<PreferencePair, ClientError>>>,
    cache: &TranslationCache,
) -> Result<(), NodeError> {
    let mut sink = PairSink::create(ctx.output_dir("dataset")?)?;
    sink.stats.rows_in = results.len();
    for result in results.into_iter().flatten() {
        match result {
            Ok(pair) => sink.write(&pair)?,
            Err(error) if params.on_error == OnError::Drop => {
                ctx.log().line(&format!("dropped: {}", error.message()));
                sink.stats.drop_for("translation_failed");
            }
            Err(error) => return Err(NodeError::new(error.message())),
        }
    }
    let stats = sink.finish()?;
    ctx.log().line(&format!(
        "translated {} of {} rows ({} texts sent, {} from the cache)",
        stats.rows_out,
        stats.rows_in,
        cache.stored(),
        cache.hits()
    ));
    Ok(())
}

/// Translations by cache key: `translations.jsonl`, one `{key, text}` per line, appended and
/// flushed per answer; a torn last line (a kill mid-write) is ignored.
struct TranslationCache {
    known: Mutex<HashMap<String, String>>,
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    file: Mutex<std::fs::File>,
    counters: Mutex<(usize, usize)>,
}

#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    text: String,
}

impl TranslationCache {
    fn open(dir: &Path) -> Result<TranslationCache, NodeError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("translations.jsonl");
        let mut known = HashMap::new();
        if let Ok(file) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<CacheLine>(&line) {
                    known.insert(entry.key, entry.text);
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| NodeError::new(format!("{}: {e}", path.display())))?;
        // A torn last line would glue onto the next entry: start on a fresh line.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
            let last = std::fs::read(&path).ok().and_then(|b| b.last().copied());
            if last != Some(b'\n') {
                file.write_all(b"\n")?;
            }
        }
        Ok(TranslationCache {
            known: Mutex::new(known),
            in_flight: Mutex::new(HashMap::new()),
            file: Mutex::new(file),
            counters: Mutex::new((0, 0)),
        })
    }

    /// The lock that serialises work on one key.
    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight.entry(key.to_string()).or_default().clone()
    }

    fn get(&self, key: &str) -> Option<String> {
        let hit = self.known.lock().ok()?.get(key).cloned();
        if hit.is_some()
            && let Ok(mut c) = self.counters.lock()
        {
            c.1 += 1;
        }
        hit
    }

    fn put(&self, key: &str, text: &str) -> std::io::Result<()> {
        let line = serde_json::to_string(&CacheLine {
            key: key.to_string(),
            text: text.to_string(),
        })
        .map_err(std::io::Error::other)?;
        {
            let mut file = self
                .file
                .lock()
                .map_err(|_| std::io::Error::other("cache lock"))?;
            file.write_all(format!("{line}\n").as_bytes())?;
            file.flush()?;
        }
        if let Ok(mut known) = self.known.lock() {
            known.insert(key.to_string(), text.to_string());
        }
        if let Ok(mut c) = self.counters.lock() {
            c.0 += 1;
        }
        Ok(())
    }

    fn stored(&self) -> usize {
        self.counters.lock().map_or(0, |c| c.0)
    }

    fn hits(&self) -> usize {
        self.counters.lock().map_or(0, |c| c.1)
    }
}
