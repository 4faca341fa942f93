//! `dataset.load`: a preference dataset artifact from a local JSONL, JSON-array, CSV or Parquet file,
//! with source columns mapped to `prompt` / `chosen` / `rejected` / `system` by a preset or a map.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::compute::run_blocking;
use crate::dataset::chat_template::{self, ChatTemplateParam};
use crate::hub::client::{RepoId, RepoKind};
use crate::hub::fetch::{materialize, remote_key};
use crate::preference::{PairSink, PreferencePair, content_id};
use flow_model::tokenize::chat::implicit_prompt;
use flow_model::tokenize::{ChatTemplate, Message};
use std::collections::{BTreeMap, HashMap};

/// Loads a preference dataset.
pub struct DatasetLoad;

/// File formats `dataset.load` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// From the file extension (`.jsonl`, `.json`, `.csv`, `.parquet`).
    #[default]
    Auto,
    /// One JSON object per line.
    Jsonl,
    /// A JSON array of objects.
    Json,
    /// Comma-separated values with a header row.
    Csv,
    /// Apache Parquet (string columns; lists for the ranking preset and messages).
    Parquet,
}

/// Named column layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// `prompt`, `chosen`, `rejected` (and `system` when present), as TRL's datasets.
    Trl,
    /// Intel/orca_dpo_pairs: `system`, `question`, `chosen`, `rejected`.
    IntelOrca,
    /// LLaMA-Factory's ranking format: `instruction` (+ `input`) and `output: [chosen, rejected]`.
    Ranking,
}

/// Source column of each field.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// Column holding the prompt.
    pub prompt: String,
    /// Column holding the preferred answer.
    pub chosen: String,
    /// Column holding the worse answer.
    pub rejected: String,
    /// Column holding the system prompt, if any.
    #[serde(default)]
    pub system: Option<String>,
}

/// A preset name or an explicit map.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "a preset (`trl`, `intel_orca`, `ranking`) or a map {prompt, chosen, rejected, system?} of source columns"
)]
pub enum Columns {
    /// A named layout.
    Preset(Preset),
    /// Explicit source columns.
    Map(ColumnMap),
}

impl Default for Columns {
    fn default() -> Self {
        Columns::Preset(Preset::Trl)
    }
}

/// Params of `dataset.load`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetLoadParams {
    /// Local file: JSONL, JSON array, CSV or Parquet. Exactly one of `path` and `repo`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Hub dataset repository (`org/name`), read through the HF cache (HF_HOME, HF_HUB_CACHE,
    /// HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE honoured); its commit sha enters the cache key.
    #[serde(default)]
    pub repo: Option<String>,
    /// Branch, tag or commit sha of `repo`.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// Split of `repo` to read: files named `SPLIT.*`, `SPLIT-*.*` or under `SPLIT/`, at the top or one directory down (`data/train-00000-of-00001.parquet`).
    #[serde(default)]
    pub split: Option<String>,
    /// Glob list of `repo` files to read instead of `split` (`*` also matches `/`).
    #[serde(default)]
    pub files: Option<Vec<String>>,
    /// File format (default: from the extension).
    #[serde(default)]
    pub format: Format,
    /// Column layout: `trl`, `intel_orca`, `ranking`, or `{prompt, chosen, rejected, system?}`.
    #[serde(default)]
    pub columns: Columns,
    /// For conversational sources (columns holding `[{role, content}, …]`): `mistral`, `chatml`, or a tokenizer directory whose `chat_template` renders them.
    #[serde(default)]
    pub chat_template: Option<ChatTemplateParam>,
    /// Keep at most this many rows (after shuffling, when shuffled).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Shuffle the rows (seeded).
    #[serde(default)]
    pub shuffle: bool,
    /// Seed of the shuffle.
    #[serde(default)]
    pub seed: u64,
}

fn default_revision() -> String {
    "main".into()
}

impl DatasetLoadParams {
    /// The globs that pick the repository's data files: `files`, or those of `split` (default `train`).
    fn repo_patterns(&self) -> Vec<String> {
        if let Some(files) = &self.files {
            return files.clone();
        }
        let split = self.split.as_deref().unwrap_or("train");
        let mut patterns = Vec::new();
        for ext in ["jsonl", "json", "csv", "parquet"] {
            for shape in [
                "{s}.{e}",
                "{s}-*.{e}",
                "{s}/*.{e}",
                "*/{s}.{e}",
                "*/{s}-*.{e}",
                "*/{s}/*.{e}",
            ] {
                patterns.push(shape.replace("{s}", split).replace("{e}", ext));
            }
        }
        patterns
    }

    fn repo_id(&self) -> Option<Result<RepoId, String>> {
        self.repo
            .as_ref()
            .map(|r| RepoId::parse(r, RepoKind::Dataset))
    }
}

impl Node for DatasetLoad {
    type Params = DatasetLoadParams;
    const TYPE: &'static str = "dataset.load";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Loads preference pairs from a local JSONL, JSON-array, CSV or Parquet file, or from a Hub dataset repository through the HF cache (split or file globs; the resolved commit sha enters the cache key and `stats.json`), into a preference dataset artifact (`data.jsonl` with prompt, chosen, rejected, optional system, a stable id, extra columns kept; `stats.json`), mapping source columns by a preset (`trl`, `intel_orca`, LLaMA-Factory's `ranking`) or a map. Conversational rows (message lists, explicit or implicit prompt) are rendered with a chat template as TRL does. Optional seeded shuffle and row limit.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "dataset",
        description: "`data.jsonl` (one pair per line) and `stats.json` (rows in and out)",
    }];

    fn check(params: &DatasetLoadParams) -> Result<(), ParamError> {
        match (&params.path, params.repo_id()) {
            (Some(_), Some(_)) => Err(ParamError::at(
                "repo",
                "give either `path` or `repo`, not both",
            )),
            (None, None) => Err(ParamError::at(
                "path",
                "missing: give a local file (`path`) or a Hub dataset (`repo: org/name`)",
            )),
            (None, Some(repo)) => {
                repo.map_err(|e| ParamError::at("repo", e))?;
                if params.files.is_some() && params.split.is_some() {
                    return Err(ParamError::at(
                        "files",
                        "give either `split` or `files`, not both",
                    ));
                }
                crate::hub::fetch::globs(&params.repo_patterns()).map(|_| ())
            }
            (Some(_), None) => Ok(()),
        }
    }

    fn external_files(params: &DatasetLoadParams) -> Vec<PathBuf> {
        params.path.iter().cloned().collect()
    }

    fn remote_state(params: &DatasetLoadParams) -> Result<BTreeMap<String, String>, String> {
        match params.repo_id() {
            Some(repo) => remote_key(&repo?, &params.revision, &params.repo_patterns()),
            None => Ok(BTreeMap::new()),
        }
    }

    async fn run(&self, ctx: NodeContext, params: DatasetLoadParams) -> Result<(), NodeError> {
        let out = ctx.output_dir("dataset")?.to_path_buf();
        let log = ctx.log().clone();
        let (sources, source) = match (&params.path, params.repo_id()) {
            (Some(path), _) => (vec![path.clone()], None),
            (None, Some(repo)) => {
                let repo = repo.map_err(NodeError::new)?;
                let patterns = params.repo_patterns();
                let chunk = crate::hub::fetch::DEFAULT_CHUNK_BYTES;
                let got = materialize(&ctx, &repo, &params.revision, &patterns, chunk).await?;
                let files: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
                let source = serde_json::json!({
                    "repo": repo.id, "revision": params.revision, "sha": got.sha, "files": files,
                });
                (
                    got.files.iter().map(|f| got.dir.join(&f.path)).collect(),
                    Some(source),
                )
            }
            (None, None) => return Err(NodeError::new("give `path` or `repo`")),
        };
        run_blocking(&ctx, move |_| {
            let template = params
                .chat_template
                .as_ref()
                .map(chat_template::load)
                .transpose()?;
            let mut rows = Vec::new();
            for path in &sources {
                rows.extend(read_rows(path, params.format)?);
            }
            let located = rows
                .into_iter()
                .map(
                    |(at, row)| match to_pair(row, &params.columns, template.as_ref()) {
                        Ok(pair) => Ok((at, pair)),
                        Err(e) => Err(NodeError::new(format!("{at}: {e}"))),
                    },
                )
                .collect::<Result<Vec<_>, _>>()?;
            check_unique_ids(&located)?;
            let mut pairs: Vec<PreferencePair> = located.into_iter().map(|(_, p)| p).collect();
            let rows_in = pairs.len();
            if params.shuffle {
                flow_model::rng::shuffle(&mut pairs, params.seed);
            }
            pairs.truncate(params.limit.unwrap_or(usize::MAX));
            let mut sink = PairSink::create(&out)?;
            sink.stats.rows_in = rows_in;
            sink.stats.source = source;
            for pair in &pairs {
                sink.write(pair)?;
            }
            if rows_in > pairs.len() {
                sink.stats
                    .dropped
                    .insert("limit".into(), rows_in - pairs.len());
            }
            let stats = sink.finish()?;
            log.line(&format!(
                "loaded {} of {} rows",
                stats.rows_out, stats.rows_in
            ));
            Ok(())
        })
        .await
    }
}

/// A source row: where it came from (`file:line`) and its columns.
type SourceRow = (String, Map<String, Json>);

/// Refuses two different pairs under one id (the reference log-probs and the splits are joined
/// by id, so one of them would silently take the other's numbers). Identical rows may repeat.
fn check_unique_ids(pairs: &[(String, PreferencePair)]) -> Result<(), NodeError> {
    let mut seen: HashMap<&str, &(String, PreferencePair)> = HashMap::new();
    for entry in pairs {
        let (at, pair) = entry;
        match seen.get(pair.id.as_str()) {
            Some((first_at, first)) if !same_content(first, pair) => {
                return Err(NodeError::new(format!(
                    "{at}: id `{}` is also the id of a different pair at {first_at}; ids must be unique (without an `id` column each pair gets its content hash)",
                    pair.id
                )));
            }
            Some(_) => {}
            None => {
                seen.insert(&pair.id, entry);
            }
        }
    }
    Ok(())
}

/// Whether two pairs say the same (prompt, answers, system).
fn same_content(a: &PreferencePair, b: &PreferencePair) -> bool {
    (&a.prompt, &a.chosen, &a.rejected, &a.system) == (&b.prompt, &b.chosen, &b.rejected, &b.system)
}

/// Every row of a source file as a JSON object, with where it came from (`file:line`).
fn read_rows(path: &Path, format: Format) -> Result<Vec<SourceRow>, NodeError> {
    let fail = |e: &dyn std::fmt::Display| NodeError::new(format!("{}: {e}", path.display()));
    let format = match format {
        Format::Auto => match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") | Some("ndjson") => Format::Jsonl,
            Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            Some("parquet") => Format::Parquet,
            _ => {
                return Err(fail(
                    &"cannot tell the format from the extension; set `format: jsonl|json|csv|parquet`",
                ));
            }
        },
        f => f,
    };
    let mut file =
        without_bom(std::fs::File::open(path).map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    let rows = match format {
        Format::Jsonl => jsonl_rows(path, file)?,
        Format::Json if opens_with(&mut file, b'{').map_err(|e| fail(&e))? => {
            // JSON Lines saved as `.json` (as `datasets`' `to_json` writes by default).
            jsonl_rows(path, file)?
        }
        Format::Json => {
            let all: Vec<Json> = serde_json::from_reader(file)
                .map_err(|e| fail(&format!("not a JSON array of objects: {e}")))?;
            all.into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Json::Object(o) => Ok((format!("{}: row {}", path.display(), i + 1), o)),
                    _ => Err(fail(&format!("row {} is not an object", i + 1))),
                })
                .collect::<Result<_, _>>()?
        }
        Format::Csv => csv_rows(path, file)?,
        Format::Parquet => parquet_rows(path, std::fs::File::open(path).map_err(|e| fail(&e))?)?,
        Format::Auto => unreachable!("resolved above"),
    };
    if rows.is_empty() {
        return Err(fail(&"no rows (the file is empty)"));
    }
    Ok(rows)
}

/// A text file's reader past its UTF-8 byte-order mark, if it opens with one (Windows editors
/// and Excel write it): the rows are the same with and without.
fn without_bom(file: std::fs::File) -> std::io::Result<BufReader<std::fs::File>> {
    let mut reader = BufReader::new(file);
    if reader.fill_buf()?.starts_with(b"\xEF\xBB\xBF") {
        reader.consume(3);
    }
    Ok(reader)
}

/// Whether the text's first non-blank byte is `byte` (looking no further than the buffer).
fn opens_with(reader: &mut BufReader<std::fs::File>, byte: u8) -> std::io::Result<bool> {
    let buffer = reader.fill_buf()?;
    Ok(buffer.iter().find(|b| !b.is_ascii_whitespace()) == Some(&byte))
}

fn jsonl_rows(path: &Path, file: BufReader<std::fs::File>) -> Result<Vec<SourceRow>, NodeError> {
    let mut rows = Vec::new();
    for (n, line) in file.lines().enumerate() {
        let at = format!("{}:{}", path.display(), n + 1);
        let line = line.map_err(|e| NodeError::new(format!("{at}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(Json::Object(o)) => rows.push((at, o)),
            Ok(_) => return Err(NodeError::new(format!("{at}: expected a JSON object"))),
            Err(e) => return Err(NodeError::new(format!("{at}: bad JSON: {e}"))),
        }
    }
    Ok(rows)
}

fn csv_rows(path: &Path, file: BufReader<std::fs::File>) -> Result<Vec<SourceRow>, NodeError> {
    let mut reader = csv::Reader::from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| NodeError::new(format!("{}: {e}", path.display())))?
        .clone();
    for (i, name) in headers.iter().enumerate() {
        if headers.iter().take(i).any(|earlier| earlier == name) {
            return Err(NodeError::new(format!(
                "{}:1: column `{name}` appears twice in the header",
                path.display()
            )));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            NodeError::new(format!("{}:{line}: {e}", path.display()))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let row = headers
            .iter()
            .zip(record.iter())
            .map(|(k, v)| (k.to_string(), Json::String(v.to_string())))
            .collect();
        rows.push((format!("{}:{line}", path.display()), row));
    }
    Ok(rows)
}

fn parquet_rows(path: &Path, file: std::fs::File) -> Result<Vec<SourceRow>, NodeError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let fail = |e: parquet::errors::ParquetError| {
        NodeError::new(format!(
            "{}: not a readable Parquet file: {e}",
            path.display()
        ))
    };
    let reader = SerializedFileReader::new(file).map_err(fail)?;
    let mut rows = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(fail)?.enumerate() {
        let at = format!("{}: row {}", path.display(), i + 1);
        match row.map_err(fail)?.to_json_value() {
            Json::Object(o) => rows.push((at, o)),
            _ => return Err(NodeError::new(format!("{at}: not a record"))),
        }
    }
    Ok(rows)
}

/// Maps one source row to a pair; other columns are kept.
fn to_pair(
    mut row: Map<String, Json>,
    columns: &Columns,
    template: Option<&ChatTemplate>,
) -> Result<PreferencePair, String> {
    let (prompt, chosen, rejected, system) = match columns {
        Columns::Preset(Preset::Ranking) => return ranking_pair(row),
        Columns::Preset(Preset::Trl) => ("prompt", "chosen", "rejected", Some("system")),
        Columns::Preset(Preset::IntelOrca) => ("question", "chosen", "rejected", Some("system")),
        Columns::Map(m) => (
            m.prompt.as_str(),
            m.chosen.as_str(),
            m.rejected.as_str(),
            m.system.as_deref(),
        ),
    };
    if row.get(chosen).is_some_and(Json::is_array) {
        require(&row, &[chosen, rejected])?;
        return conversational_pair(row, [prompt, chosen, rejected], system, template);
    }
    require(&row, &[prompt, chosen, rejected])?;
    let prompt = take_text(&mut row, prompt)?;
    let chosen = take_text(&mut row, chosen)?;
    let rejected = take_text(&mut row, rejected)?;
    let system = match system {
        Some(column) => take_optional_text(&mut row, column)?,
        None => None,
    };
    finish_pair(row, prompt, chosen, rejected, system)
}

/// A row whose answers are message lists, rendered with the chat template as TRL does. The
/// prompt column may hold messages, a plain user text, or be absent (the leading messages chosen
/// and rejected share are the prompt); a `system` column (a text or a message list) opens the
/// conversation. Every message reaches the template, which refuses what it cannot render.
fn conversational_pair(
    mut row: Map<String, Json>,
    [prompt, chosen, rejected]: [&str; 3],
    system: Option<&str>,
    template: Option<&ChatTemplate>,
) -> Result<PreferencePair, String> {
    let template = template.ok_or(
        "the answers are message lists; set `chat_template: mistral|chatml|<tokenizer dir>` to render them",
    )?;
    let messages = |value: Json, column: &str| -> Result<Vec<Message>, String> {
        match value {
            Json::String(text) if column == prompt => Ok(vec![Message::new("user", &text)]),
            Json::String(text) => Ok(vec![Message::new("system", &text)]),
            value => serde_json::from_value(value).map_err(|_| {
                format!("column `{column}` must be a list of {{role, content}} messages")
            }),
        }
    };
    let system = match system.and_then(|column| row.remove(column).map(|v| (column, v))) {
        None | Some((_, Json::Null)) => Vec::new(),
        Some((column, value)) => messages(value, column)?,
    };
    let chosen_messages = match row.remove(chosen) {
        Some(value) => messages(value, chosen)?,
        None => return Err(missing_columns(&row, &[chosen])),
    };
    let rejected_messages = match row.remove(rejected) {
        Some(value) => messages(value, rejected)?,
        None => return Err(missing_columns(&row, &[rejected])),
    };
    let (prompt_messages, chosen_messages, rejected_messages) = match row.remove(prompt) {
        Some(value) => (
            [system, messages(value, prompt)?].concat(),
            chosen_messages,
            rejected_messages,
        ),
        None => implicit_prompt(
            &[system.clone(), chosen_messages].concat(),
            &[system, rejected_messages].concat(),
        )?,
    };
    let (prompt, chosen, rejected) =
        template.render_pair(&prompt_messages, &chosen_messages, &rejected_messages)?;
    let mut pair = finish_pair(row, prompt, chosen, rejected, None)?;
    pair.templated = true;
    Ok(pair)
}

/// LLaMA-Factory's ranking rows: `instruction`, optional `input`, `output: [chosen, rejected]`.
fn ranking_pair(mut row: Map<String, Json>) -> Result<PreferencePair, String> {
    require(&row, &["instruction", "output"])?;
    let instruction = take_text(&mut row, "instruction")?;
    let input = take_optional_text(&mut row, "input")?.unwrap_or_default();
    let prompt = if input.is_empty() {
        instruction
    } else {
        format!("{instruction}\n{input}")
    };
    let output = row
        .remove("output")
        .ok_or("missing column `output` (the ranking preset needs instruction, input, output)")?;
    let [chosen, rejected]: [String; 2] = serde_json::from_value(output)
        .map_err(|_| "column `output` must be a list of two strings: [chosen, rejected]")?;
    let system = take_optional_text(&mut row, "system")?;
    finish_pair(row, prompt, chosen, rejected, system)
}

/// Errors naming every column of `columns` the row lacks, and the columns it has.
fn require(row: &Map<String, Json>, columns: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| !row.contains_key(*c))
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(missing_columns(row, &missing)),
    }
}

/// "missing column `a` (the row has: b, c)".
fn missing_columns(row: &Map<String, Json>, missing: &[&str]) -> String {
    let quoted: Vec<String> = missing.iter().map(|c| format!("`{c}`")).collect();
    let names: Vec<&str> = row.keys().map(String::as_str).collect();
    format!(
        "missing column{} {} (the row has: {})",
        if missing.len() == 1 { "" } else { "s" },
        quoted.join(", "),
        names.join(", ")
    )
}

fn take_text(row: &mut Map<String, Json>, column: &str) -> Result<String, String> {
    match row.remove(column) {
        Some(Json::String(s)) => Ok(s),
        Some(other) => Err(format!("column `{column}` must be a string, found {other}")),
        None => Err(missing_columns(row, &[column])),
    }
}

/// A text column that may be absent.
fn take_optional_text(row: &mut Map<String, Json>, column: &str) -> Result<Option<String>, String> {
    if row.contains_key(column) {
        take_text(row, column).map(Some)
    } else {
        Ok(None)
    }
}

fn finish_pair(
    mut extra: Map<String, Json>,
    prompt: String,
    chosen: String,
    rejected: String,
    system: Option<String>,
) -> Result<PreferencePair, String> {
    let id = match extra.remove("id") {
        None | Some(Json::Null) => content_id(&prompt, &chosen, &rejected),
        Some(Json::String(s)) if !s.trim().is_empty() => s,
        Some(Json::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "column `id` must be a non-empty string or a number, found {other}"
            ));
        }
    };
    Ok(PreferencePair {
        id,
        prompt,
        chosen,
        rejected,
        system,
        templated: false,
        extra,
    })
}
