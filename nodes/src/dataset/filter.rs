//! `dataset.filter`: drops preference pairs by rules, each drop counted by reason in
//! `stats.json`. Streams: rows are read, judged and written in chunks (stateless rules in
//! parallel), so memory grows only with the dedup state (8 bytes per kept prompt, a MinHash
//! signature per kept row when near-dup detection is on), never with the whole dataset.

use flow_engine::node::{Node, NodeContext, NodeError, OutputSpec, ParamError};
use rayon::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

use crate::compute::{check_cancelled, run_blocking};
use crate::preference::{
    PairSink, PreferencePair, Stats, data_file, file_in, pair_line, parse_pair,
};
use std::io::{BufRead, BufReader};

/// Filters a preference dataset.
pub struct DatasetFilter;

/// Params of `dataset.filter`; every rule is optional.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetFilterParams {
    /// The preference dataset, e.g. `${load.dataset}`.
    pub dataset: PathBuf,
    /// Keep pairs whose chosen answer is in this language (ISO 639-1 like `de`, or 639-3 like `deu`).
    #[serde(default)]
    pub language: Option<String>,
    /// Languages the detector chooses among (ISO codes; the target is always one): a short list
    /// is several times faster than all 69 whatlang knows and covers the usual contamination.
    #[serde(default = "default_candidates")]
    pub language_candidates: Vec<String>,
    /// Least detection confidence (0–1) for `language`.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f64,
    /// Drop pairs with a prompt, chosen or rejected text shorter than this (characters).
    #[serde(default)]
    pub min_chars: Option<usize>,
    /// Drop pairs with a prompt, chosen or rejected text longer than this (characters).
    #[serde(default)]
    pub max_chars: Option<usize>,
    /// Drop pairs whose prompt + longer answer exceeds this many tokens of `tokenizer`.
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Directory with the `tokenizer.json` for `max_tokens`, e.g. `${base.model}`.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Drop pairs whose chosen equals rejected, or with an empty text.
    #[serde(default = "yes")]
    pub drop_identical: bool,
    /// Drop pairs whose prompt (case and whitespace normalised) was seen before.
    #[serde(default = "yes")]
    pub dedup_prompts: bool,
    /// Drop pairs whose prompt + chosen is this similar (estimated Jaccard of word 3-grams, MinHash) to a kept one.
    #[serde(default)]
    pub near_dup_threshold: Option<f64>,
    /// Regular expressions; a pair with any field matching one is dropped.
    #[serde(default)]
    pub blocklist: Vec<String>,
}

fn default_candidates() -> Vec<String> {
    ["de", "en", "fr", "es", "it", "nl", "pt", "pl"]
        .map(String::from)
        .to_vec()
}

fn default_min_confidence() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}

/// ISO 639-1 codes of common languages, to whatlang's ISO 639-3.
const LANGUAGE_CODES: [(&str, &str); 24] = [
    ("de", "deu"),
    ("en", "eng"),
    ("fr", "fra"),
    ("es", "spa"),
    ("it", "ita"),
    ("nl", "nld"),
    ("pt", "por"),
    ("pl", "pol"),
    ("ru", "rus"),
    ("sv", "swe"),
    ("da", "dan"),
    ("fi", "fin"),
    ("tr", "tur"),
    ("cs", "ces"),
    ("hu", "hun"),
    ("ro", "ron"),
    ("uk", "ukr"),
    ("el", "ell"),
    ("ja", "jpn"),
    ("zh", "cmn"),
    ("ko", "kor"),
    ("ar", "ara"),
    ("hi", "hin"),
    ("nb", "nob"),
];

fn language_of(code: &str) -> Option<whatlang::Lang> {
    let three = LANGUAGE_CODES
        .iter()
        .find(|(two, _)| *two == code)
        .map_or(code, |(_, three)| three);
    whatlang::Lang::from_code(three)
}

/// The rules, compiled.
pub struct Rules {
    params: DatasetFilterParams,
    language: Option<whatlang::Lang>,
    detector: whatlang::Detector,
    blocklist: regex::RegexSet,
    tokenizer: Option<tokenizers::Tokenizer>,
}

impl DatasetFilterParams {
    /// Compiles the rules; errors name the param.
    pub fn compile(&self) -> Result<Rules, ParamError> {
        let language = match &self.language {
            Some(code) => Some(language_of(code).ok_or_else(|| {
                ParamError::at("language", format!("unknown language code `{code}` (use ISO 639-1 like `de` or 639-3 like `deu`)"))
            })?),
            None => None,
        };
        let mut candidates = self
            .language_candidates
            .iter()
            .map(|code| {
                language_of(code).ok_or_else(|| {
                    ParamError::at(
                        "language_candidates",
                        format!("unknown language code `{code}`"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        candidates.extend(language);
        for pattern in &self.blocklist {
            regex::Regex::new(pattern).map_err(|e| {
                ParamError::at("blocklist", format!("invalid regex `{pattern}`: {e}"))
            })?;
        }
        let blocklist = regex::RegexSet::new(&self.blocklist)
            .map_err(|e| ParamError::at("blocklist", e.to_string()))?;
        if self.max_tokens.is_some() != self.tokenizer.is_some() {
            return Err(ParamError::at(
                "tokenizer",
                "max_tokens and tokenizer go together",
            ));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(ParamError::at(
                "min_confidence",
                "min_confidence must be in [0, 1]",
            ));
        }
        if let Some(t) = self.near_dup_threshold
            && !(t > 0.0 && t <= 1.0)
        {
            return Err(ParamError::at(
                "near_dup_threshold",
                "near_dup_threshold must be in (0, 1]",
            ));
        }
        Ok(Rules {
            params: self.clone(),
            language,
            detector: whatlang::Detector::with_allowlist(candidates),
            blocklist,
            tokenizer: None,
        })
    }
}

impl Node for DatasetFilter {
    type Params = DatasetFilterParams;
    const TYPE: &'static str = "dataset.filter";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Drops preference pairs by rules, each counted by reason in `stats.json`: language of the chosen answer (whatlang among `language_candidates`, `language`, `min_confidence`), `min_chars` / `max_chars`, token length with a model's tokenizer (`max_tokens`, `tokenizer`), identical or empty answers, duplicate prompts (normalised), near-duplicates (MinHash over word 3-grams, `near_dup_threshold`) and a regex `blocklist`. Streams the data in chunks, judging rows in parallel.";
    const OUTPUTS: &'static [OutputSpec] = &[OutputSpec {
        name: "dataset",
        description: "`data.jsonl` (the kept pairs, in input order) and `stats.json` (rows in, rows out, drops per rule)",
    }];

    fn check(params: &DatasetFilterParams) -> Result<(), ParamError> {
        params.compile().map(|_| ())
    }

    fn external_files(params: &DatasetFilterParams) -> Vec<PathBuf> {
        let mut files = vec![params.dataset.clone()];
        files.extend(params.tokenizer.clone());
        files
    }

    async fn run(&self, ctx: NodeContext, params: DatasetFilterParams) -> Result<(), NodeError> {
        let out = ctx.output_dir("dataset")?.to_path_buf();
        let log = ctx.log().clone();
        run_blocking(&ctx, move |token| {
            let rules = params
                .compile()
                .map_err(|e| NodeError::new(e.message))?
                .with_tokenizer()?;
            let stats = filter_dataset(&params.dataset, &out, &rules, &token)?;
            log.line(&format!(
                "kept {} of {} rows; dropped {:?}",
                stats.rows_out, stats.rows_in, stats.dropped
            ));
            Ok(())
        })
        .await
    }
}

/// Rows judged at a time.
const CHUNK_ROWS: usize = 4096;

/// Chunks in flight between two stages of the pipeline.
const CHUNKS_IN_FLIGHT: usize = 2;

/// A numbered line of the input (1-based).
type Line = (usize, String);

/// One row after the stateless rules: its dedup keys or the reason it is dropped, and, when
/// kept so far, its output line.
struct Judged {
    verdict: Result<Keys, &'static str>,
    line: Option<String>,
}

/// Filters `input` into the dataset directory `out`. Three stages run at once, as a pipeline:
/// a thread reads chunks of lines, the rayon pool parses, judges and serialises each chunk's
/// rows in parallel, and a thread applies the dedup rules (which need input order) and writes.
pub fn filter_dataset(
    input: &Path,
    out: &Path,
    rules: &Rules,
    token: &CancellationToken,
) -> Result<Stats, NodeError> {
    let sink = PairSink::create(out)?;
    let dedup = Dedup::new(rules.params.near_dup_threshold);
    let file_path = data_file(input);
    let file = std::fs::File::open(&file_path)
        .map_err(|e| NodeError::new(format!("{}: {e}", file_path.display())))?;
    let (lines_tx, lines_rx) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let (judged_tx, judged_rx) = std::sync::mpsc::sync_channel(CHUNKS_IN_FLIGHT);
    let stats = std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_chunks(BufReader::new(file), &file_path, lines_tx));
        let writer = scope.spawn(|| keep_unique(judged_rx, sink, dedup));
        let judged = judge_chunks(lines_rx, judged_tx, rules, &file_path, token);
        let read = joined(reader.join());
        let written = joined(writer.join());
        judged.and(read).and(written)
    })?;
    if stats.rows_in == 0 {
        return Err(NodeError::new(format!(
            "{}: no preference pairs (the file is empty)",
            input.display()
        )));
    }
    Ok(stats)
}

/// A pipeline thread's result; a panic becomes an error.
fn joined<T>(result: std::thread::Result<Result<T, NodeError>>) -> Result<T, NodeError> {
    result.unwrap_or_else(|_| Err(NodeError::new("a filter thread panicked")))
}

/// Reads numbered lines in chunks until the end, or until the next stage stops listening.
fn read_chunks(
    reader: impl BufRead,
    path: &Path,
    chunks: std::sync::mpsc::SyncSender<Vec<Line>>,
) -> Result<(), NodeError> {
    let mut lines = reader.lines().enumerate();
    loop {
        let chunk: Vec<Line> = lines
            .by_ref()
            .take(CHUNK_ROWS)
            .map(|(n, l)| l.map(|l| (n + 1, l)))
            .collect::<Result<_, _>>()
            .map_err(|e| NodeError::new(format!("{}: {e}", path.display())))?;
        if chunk.is_empty() || chunks.send(chunk).is_err() {
            return Ok(());
        }
    }
}

/// Parses, judges and serialises every chunk's rows in parallel, in order.
fn judge_chunks(
    chunks: std::sync::mpsc::Receiver<Vec<Line>>,
    judged: std::sync::mpsc::SyncSender<Vec<Judged>>,
    rules: &Rules,
    path: &Path,
    token: &CancellationToken,
) -> Result<(), NodeError> {
    for chunk in chunks {
        check_cancelled(token)?;
        let rows: Vec<Judged> = chunk
            .par_iter()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| {
                let pair = parse_pair(line).map_err(|e| {
                    NodeError::new(format!(
                        "{}:{n}: not a preference pair: {e}",
                        path.display()
                    ))
                })?;
                let verdict = rules.judge(&pair);
                let line = verdict.is_ok().then(|| pair_line(&pair));
                Ok(Judged { verdict, line })
            })
            .collect::<Result<_, NodeError>>()?;
        if judged.send(rows).is_err() {
            break;
        }
    }
    Ok(())
}

/// Applies the dedup rules in input order and writes the kept rows.
fn keep_unique(
    judged: std::sync::mpsc::Receiver<Vec<Judged>>,
    mut sink: PairSink,
    mut dedup: Dedup,
) -> Result<Stats, NodeError> {
    for row in judged.into_iter().flatten() {
        sink.stats.rows_in += 1;
        match row.verdict.and_then(|keys| dedup.admit(keys)) {
            Ok(()) => sink.write_line(row.line.as_deref().unwrap_or_default())?,
            Err(reason) => sink.stats.drop_for(reason),
        }
    }
    sink.finish()
}

/// What the dedup rules need of a row that passed the others.
pub struct Keys {
    /// The normalised prompt's hash, when prompts are deduplicated.
    prompt: Option<u64>,
    /// The row's MinHash, when near-duplicates are dropped.
    minhash: Option<MinHash>,
}

impl Rules {
    fn with_tokenizer(mut self) -> Result<Rules, NodeError> {
        if let Some(dir) = &self.params.tokenizer {
            let path = file_in(dir, "tokenizer.json");
            self.tokenizer = Some(
                tokenizers::Tokenizer::from_file(&path)
                    .map_err(|e| NodeError::new(format!("{}: {e}", path.display())))?,
            );
        }
        Ok(self)
    }

    /// The stateless rules: the first failing one's reason, or the row's dedup keys.
    fn judge(&self, p: &PreferencePair) -> Result<Keys, &'static str> {
        let texts = [&p.prompt, &p.chosen, &p.rejected];
        let rules = &self.params;
        if rules.drop_identical {
            if texts.iter().any(|t| t.trim().is_empty()) {
                return Err("empty");
            }
            if p.chosen.trim() == p.rejected.trim() {
                return Err("identical");
            }
        }
        let chars = |t: &&String| t.chars().count();
        if rules
            .min_chars
            .is_some_and(|min| texts.iter().any(|t| chars(t) < min))
        {
            return Err("too_short");
        }
        if rules
            .max_chars
            .is_some_and(|max| texts.iter().any(|t| chars(t) > max))
        {
            return Err("too_long");
        }
        if !self.blocklist.is_empty() && texts.iter().any(|t| self.blocklist.is_match(t)) {
            return Err("blocklist");
        }
        if let Some(lang) = self.language {
            let detected = self.detector.detect(&p.chosen);
            if !detected.is_some_and(|i| i.lang() == lang && i.confidence() >= rules.min_confidence)
            {
                return Err("language");
            }
        }
        if let (Some(max), Some(tokenizer)) = (rules.max_tokens, &self.tokenizer) {
            // A token covers at least one byte (byte-level BPE, byte fallback), plus one for a
            // prepended word marker: pairs under that bound need no tokenizing.
            let bound = p.prompt.len() + p.chosen.len().max(p.rejected.len()) + 2;
            if bound > max {
                let count = |t: &str| {
                    tokenizer
                        .encode_fast(t, false)
                        .map_or(usize::MAX, |e| e.len())
                };
                let longest = count(&p.chosen).max(count(&p.rejected));
                if count(&p.prompt).saturating_add(longest) > max {
                    return Err("too_many_tokens");
                }
            }
        }
        Ok(Keys {
            prompt: rules.dedup_prompts.then(|| prompt_key(&p.prompt)),
            minhash: rules
                .near_dup_threshold
                .map(|_| minhash(&[&p.prompt, &p.chosen])),
        })
    }
}

/// FNV-1a of a word, lowercased on the fly (no allocation).
fn word_hash(word: &str) -> u64 {
    let step = |h: u64, c: char| (h ^ u64::from(c)).wrapping_mul(0x0100_0000_01b3);
    let start = 0xcbf2_9ce4_8422_2325u64;
    if word.is_ascii() {
        // The same value as below, without Unicode case tables.
        return word
            .bytes()
            .fold(start, |h, b| step(h, char::from(b.to_ascii_lowercase())));
    }
    word.chars().flat_map(char::to_lowercase).fold(start, step)
}

/// SplitMix64's finaliser: spreads the bits of a combined hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of the prompt with case and whitespace normalised.
fn prompt_key(prompt: &str) -> u64 {
    prompt
        .split_whitespace()
        .fold(0u64, |h, w| mix(h.rotate_left(17) ^ word_hash(w)))
}

/// MinHash permutations (and LSH: bands of `ROWS_PER_BAND`).
const PERMUTATIONS: usize = 128;
const ROWS_PER_BAND: usize = 4;
const BANDS: usize = PERMUTATIONS / ROWS_PER_BAND;

/// Multipliers (odd) and offsets of the universal hash family `(a·h + b) >> 32`.
static FAMILY: std::sync::LazyLock<([u64; PERMUTATIONS], [u64; PERMUTATIONS])> =
    std::sync::LazyLock::new(|| {
        let mut rng = flow_model::rng::SplitMix64::new(0x5EED);
        let mut a = [0u64; PERMUTATIONS];
        let mut b = [0u64; PERMUTATIONS];
        for k in 0..PERMUTATIONS {
            a[k] = rng.next_u64() | 1;
            b[k] = rng.next_u64();
        }
        (a, b)
    });

/// A row's MinHash signature and its LSH band keys (computed with the stateless rules, in
/// parallel, so the ordered dedup stage only looks them up).
pub struct MinHash {
    signature: [u32; PERMUTATIONS],
    bands: [u64; BANDS],
}

/// MinHash of the word 3-grams of `texts` (lowercased), read as one text.
fn minhash(texts: &[&str]) -> MinHash {
    let words: Vec<u64> = texts
        .iter()
        .flat_map(|t| t.split_whitespace())
        .map(word_hash)
        .collect();
    let shingles: Vec<u64> = words
        .windows(3.min(words.len()).max(1))
        .map(|shingle| mix(shingle.iter().fold(0u64, |h, &w| h.rotate_left(21) ^ w)))
        .collect();
    let signature = signature_of(&shingles);
    let mut bands = [0u64; BANDS];
    for (band, rows) in signature.chunks(ROWS_PER_BAND).enumerate() {
        let seed = (band as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        bands[band] = rows.iter().fold(seed, |h, &r| mix(h ^ u64::from(r)));
    }
    MinHash { signature, bands }
}

/// The MinHash signature of shingle hashes: per permutation, the least `(a·h + b) >> 32`.
/// With AVX-512 (DQ has the 64-bit multiply) the same loop is compiled eight lanes wide.
fn signature_of(shingles: &[u64]) -> [u32; PERMUTATIONS] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { signature_avx512(shingles) };
    }
    signature_lanes(shingles)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn signature_avx512(shingles: &[u64]) -> [u32; PERMUTATIONS] {
    signature_lanes(shingles)
}

#[inline(always)]
fn signature_lanes(shingles: &[u64]) -> [u32; PERMUTATIONS] {
    let (a, b) = &*FAMILY;
    let mut signature = [u32::MAX; PERMUTATIONS];
    for &h in shingles {
        for k in 0..PERMUTATIONS {
            let value = (a[k].wrapping_mul(h).wrapping_add(b[k]) >> 32) as u32;
            signature[k] = signature[k].min(value);
        }
    }
    signature
}

/// A hasher for keys that are already well-mixed 64-bit hashes: it passes them through.
#[derive(Default)]
struct PreMixed(u64);

impl std::hash::Hasher for PreMixed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = mix(self.0 ^ u64::from(byte));
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type PreMixedState = std::hash::BuildHasherDefault<PreMixed>;

/// No row.
const NONE: u32 = u32::MAX;

/// The dedup state: prompts seen, and an LSH index over kept rows' MinHash signatures.
struct Dedup {
    prompts: HashSet<u64, PreMixedState>,
    threshold: Option<f64>,
    /// Kept rows' signatures, `PERMUTATIONS` values each.
    signatures: Vec<u32>,
    /// Band key → the latest kept row with it.
    heads: HashMap<u64, u32, PreMixedState>,
    /// `[row × BANDS + band]` → the kept row before `row` with the same band key, or [`NONE`].
    chain: Vec<u32>,
    /// Per kept row, the last check that compared it (each candidate is compared once).
    compared_in: Vec<u32>,
    checks: u32,
}

impl Dedup {
    fn new(threshold: Option<f64>) -> Dedup {
        Dedup {
            prompts: HashSet::default(),
            threshold,
            signatures: Vec::new(),
            heads: HashMap::default(),
            chain: Vec::new(),
            compared_in: Vec::new(),
            checks: 0,
        }
    }

    /// Admits a row (remembering it) or names why it is a duplicate.
    fn admit(&mut self, keys: Keys) -> Result<(), &'static str> {
        if keys.prompt.is_some_and(|p| self.prompts.contains(&p)) {
            return Err("duplicate_prompt");
        }
        if let (Some(threshold), Some(minhash)) = (self.threshold, &keys.minhash) {
            if self.is_near_duplicate(minhash, threshold) {
                return Err("near_duplicate");
            }
            self.remember(minhash);
        }
        self.prompts.extend(keys.prompt);
        Ok(())
    }

    /// Whether a kept row sharing a band with `minhash` has an estimated Jaccard ≥ `threshold`.
    fn is_near_duplicate(&mut self, minhash: &MinHash, threshold: f64) -> bool {
        self.checks += 1;
        for (band, key) in minhash.bands.iter().enumerate() {
            let mut row = self.heads.get(key).copied().unwrap_or(NONE);
            while row != NONE {
                let index = row as usize;
                if self.compared_in[index] != self.checks {
                    self.compared_in[index] = self.checks;
                    let kept = &self.signatures[index * PERMUTATIONS..][..PERMUTATIONS];
                    let same = kept
                        .iter()
                        .zip(&minhash.signature)
                        .filter(|(a, b)| a == b)
                        .count();
                    if same as f64 / PERMUTATIONS as f64 >= threshold {
                        return true;
                    }
                }
                row = self.chain[index * BANDS + band];
            }
        }
        false
    }

    /// Adds a kept row to the LSH index.
    fn remember(&mut self, minhash: &MinHash) {
        let row = self.compared_in.len() as u32;
        self.signatures.extend_from_slice(&minhash.signature);
        self.compared_in.push(0);
        for key in minhash.bands {
            let previous = self.heads.insert(key, row).unwrap_or(NONE);
            self.chain.push(previous);
        }
    }
}

/// What the filter benchmark measured.
#[derive(Debug, serde::Serialize)]
pub struct FilterBenchResult {
    /// Rows filtered.
    pub rows: usize,
    /// Rows kept.
    pub rows_out: usize,
    /// Rows per second (reading, judging, dedup, writing).
    pub rows_per_s: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// Rayon threads used.
    pub threads: usize,
}

/// `flow bench filter`: every rule on `rows` synthetic German pairs (some duplicated, some
/// near-duplicated, some English, some blocked), with a BPE tokenizer trained on them.
pub fn bench_filter(rows: usize, dir: &Path) -> Result<FilterBenchResult, NodeError> {
    const WORDS: [&str; 24] = [
        "der", "die", "das", "Haus", "ist", "groß", "und", "schön", "wir", "gehen", "heute",
        "nach", "Berlin", "mit", "dem", "Zug", "weil", "es", "regnet", "aber", "morgen", "scheint",
        "die", "Sonne",
    ];
    let mut rng = flow_model::rng::SplitMix64::new(7);
    let mut sentence = |n: usize| -> String {
        (0..n)
            .map(|_| WORDS[rng.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let input = dir.join("bench-input.jsonl");
    let mut text = String::new();
    for i in 0..rows {
        let prompt = match i % 50 {
            0 if i > 0 => format!("Frage {}: {}", i - 50, "?"),
            _ => format!("Frage {i}: {}?", sentence(8)),
        };
        let chosen = match i % 97 {
            0 => "This answer is written in English and should be dropped.".to_string(),
            _ => format!("{}.", sentence(20)),
        };
        let row = serde_json::json!({"id": i.to_string(), "prompt": prompt, "chosen": chosen, "rejected": sentence(12)});
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(&input, &text)?;
    let sample: Vec<String> = text.lines().take(2000).map(String::from).collect();
    let tokenizer_dir = dir.join("tokenizer");
    std::fs::create_dir_all(&tokenizer_dir)?;
    flow_model::tokenize::bpe::train_bpe(&sample, 400, 2, &tokenizer_dir)
        .map_err(|e| NodeError::new(e.to_string()))?;
    let params = DatasetFilterParams {
        dataset: input.clone(),
        language: Some("de".into()),
        language_candidates: default_candidates(),
        min_confidence: 0.0,
        min_chars: Some(5),
        max_chars: Some(2000),
        max_tokens: Some(256),
        tokenizer: Some(tokenizer_dir),
        drop_identical: true,
        dedup_prompts: true,
        near_dup_threshold: Some(0.8),
        blocklist: vec!["(?i)verboten".into(), r"\bhttps?://".into()],
    };
    let rules = params
        .compile()
        .map_err(|e| NodeError::new(e.message))?
        .with_tokenizer()?;
    let started = std::time::Instant::now();
    let stats = filter_dataset(&input, &dir.join("out"), &rules, &CancellationToken::new())?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(FilterBenchResult {
        rows,
        rows_out: stats.rows_out,
        rows_per_s: rows as f64 / seconds,
        peak_rss_mib: flow_model::bench::peak_rss_mib(),
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(prompt: Option<u64>, text: Option<&str>) -> Keys {
        Keys {
            prompt,
            minhash: text.map(|t| minhash(&[t])),
        }
    }

    #[test]
    fn repeated_prompts_are_dropped_only_when_keyed() {
        let mut dedup = Dedup::new(None);
        assert_eq!(dedup.admit(keys(Some(7), None)), Ok(()));
        assert_eq!(dedup.admit(keys(Some(7), None)), Err("duplicate_prompt"));
        assert_eq!(dedup.admit(keys(None, None)), Ok(()));
        assert_eq!(dedup.admit(keys(None, None)), Ok(()));
    }

    #[test]
    fn near_duplicates_are_found_and_distinct_rows_kept() {
        let text = "der schnelle braune Fuchs springt über den faulen Hund und läuft dann weiter in den Wald";
        let other =
            "heute regnet es in Berlin aber morgen scheint wieder die Sonne über der ganzen Stadt";
        let mut dedup = Dedup::new(Some(0.8));
        assert_eq!(dedup.admit(keys(Some(1), Some(text))), Ok(()));
        assert_eq!(dedup.admit(keys(Some(2), Some(other))), Ok(()));
        let same_words = text.to_uppercase().replace(' ', "  ");
        assert_eq!(
            dedup.admit(keys(Some(3), Some(&same_words))),
            Err("near_duplicate")
        );
        // A dropped near-duplicate's prompt is not remembered.
        assert_eq!(dedup.admit(keys(Some(3), None)), Ok(()));
        assert_eq!(dedup.signatures.len(), 2 * PERMUTATIONS);
        assert_eq!(dedup.chain.len(), 2 * BANDS);
    }
}
