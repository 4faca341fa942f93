//! The preference dataset artifact: a directory with `data.jsonl`, one pair per line with
//! `prompt`, `chosen`, `rejected` (strings), optional `system` and `id` (a content hash when the
//! source has none), and any extra columns kept.

use flow_engine::node::NodeError;
use flow_model::tokenize::PairText;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One preference pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PreferencePair {
    /// Stable id.
    #[serde(default)]
    pub id: String,
    /// The prompt, as the model sees it.
    pub prompt: String,
    /// The preferred completion.
    pub chosen: String,
    /// The worse completion.
    pub rejected: String,
    /// System text: rendered before the prompt when the pair is tokenized (with the model's
    /// chat template when it has one, else as `system + "\n\n" + prompt`); an empty one is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Whether prompt, chosen and rejected are a chat template's rendering (tokenized without
    /// adding special tokens and with no EOS appended: the template wrote them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub templated: bool,
    /// Every other column, kept.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Read by hand rather than derived: with `#[serde(flatten)]` serde first buffers every field of
/// the row, which made parsing the slowest part of filtering a large dataset.
impl<'de> Deserialize<'de> for PreferencePair {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(PairVisitor)
    }
}

/// A key of a preference row.
enum PairField {
    Id,
    Prompt,
    Chosen,
    Rejected,
    System,
    Templated,
    Other(String),
}

impl<'de> Deserialize<'de> for PairField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl serde::de::Visitor<'_> for FieldVisitor {
            type Value = PairField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<PairField, E> {
                Ok(match key {
                    "id" => PairField::Id,
                    "prompt" => PairField::Prompt,
                    "chosen" => PairField::Chosen,
                    "rejected" => PairField::Rejected,
                    "system" => PairField::System,
                    "templated" => PairField::Templated,
                    other => PairField::Other(other.to_string()),
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct PairVisitor;

/// Sets a field once; a second value is serde's "duplicate field" error.
fn set_once<T, E: serde::de::Error>(
    slot: &mut Option<T>,
    name: &'static str,
    value: T,
) -> Result<(), E> {
    match slot.replace(value) {
        Some(_) => Err(E::duplicate_field(name)),
        None => Ok(()),
    }
}

impl<'de> serde::de::Visitor<'de> for PairVisitor {
    type Value = PreferencePair;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a preference pair: an object with `prompt`, `chosen` and `rejected`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<PreferencePair, A::Error> {
        use serde::de::Error;
        let (mut id, mut prompt, mut chosen, mut rejected, mut system, mut templated) =
            (None, None, None, None, None, None);
        let mut extra = serde_json::Map::new();
        while let Some(field) = map.next_key::<PairField>()? {
            match field {
                PairField::Id => set_once(&mut id, "id", map.next_value::<String>()?)?,
                PairField::Prompt => set_once(&mut prompt, "prompt", map.next_value::<String>()?)?,
                PairField::Chosen => set_once(&mut chosen, "chosen", map.next_value::<String>()?)?,
                PairField::Rejected => {
                    set_once(&mut rejected, "rejected", map.next_value::<String>()?)?
                }
                PairField::System => {
                    set_once(&mut system, "system", map.next_value::<Option<String>>()?)?
                }
                PairField::Templated => {
                    set_once(&mut templated, "templated", map.next_value::<bool>()?)?
                }
                PairField::Other(key) => {
                    extra.insert(key, map.next_value()?);
                }
            }
        }
        Ok(PreferencePair {
            id: id.unwrap_or_default(),
            prompt: prompt.ok_or_else(|| A::Error::missing_field("prompt"))?,
            chosen: chosen.ok_or_else(|| A::Error::missing_field("chosen"))?,
            rejected: rejected.ok_or_else(|| A::Error::missing_field("rejected"))?,
            system: system.flatten(),
            templated: templated.unwrap_or(false),
            extra,
        })
    }
}

impl PreferencePair {
    /// The row's text in the form the tokenizer takes it.
    pub fn text(&self) -> PairText<'_> {
        match self.templated {
            true => PairText::Rendered {
                prompt: &self.prompt,
                chosen: &self.chosen,
                rejected: &self.rejected,
            },
            false => PairText::Plain {
                prompt: &self.prompt,
                chosen: &self.chosen,
                rejected: &self.rejected,
                system: self.system.as_deref().filter(|s| !s.trim().is_empty()),
            },
        }
    }
}

/// A stable id from a pair's content: the first 16 hex digits of blake3(prompt, chosen, rejected).
pub fn content_id(prompt: &str, chosen: &str, rejected: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    for field in [prompt, chosen, rejected] {
        hasher.update(&(field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().to_hex()[..16].to_string()
}

/// `name` inside `path` when it is a directory (an artifact), else `path` itself (a file).
pub fn file_in(path: &Path, name: &str) -> PathBuf {
    if path.is_dir() {
        path.join(name)
    } else {
        path.to_path_buf()
    }
}

/// `data.jsonl` inside a dataset directory, or the path itself when it is a file.
pub fn data_file(path: &Path) -> PathBuf {
    file_in(path, "data.jsonl")
}

/// Streams the pairs of a dataset (a directory with `data.jsonl`, or a JSONL file) with their
/// line numbers; a bad line is an error naming the file and line.
pub fn stream_pairs(
    path: &Path,
) -> Result<impl Iterator<Item = Result<(usize, PreferencePair), NodeError>>, NodeError> {
    let file_path = data_file(path);
    let file = std::fs::File::open(&file_path)
        .map_err(|e| NodeError::new(format!("{}: {e}", file_path.display())))?;
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .filter_map(move |(n, line)| {
            let line = match line {
                Ok(line) if line.trim_start_matches('\u{feff}').trim().is_empty() => return None,
                // A UTF-8 byte-order mark (Windows editors, Excel exports) opens the file.
                Ok(line) if n == 0 => line.trim_start_matches('\u{feff}').to_string(),
                Ok(line) => line,
                Err(e) => {
                    return Some(Err(NodeError::new(format!(
                        "{}:{}: {e}",
                        file_path.display(),
                        n + 1
                    ))));
                }
            };
            Some(parse_pair(&line).map(|p| (n + 1, p)).map_err(|e| {
                NodeError::new(format!(
                    "{}:{}: not a preference pair: {e}",
                    file_path.display(),
                    n + 1
                ))
            }))
        }))
}

/// One `data.jsonl` line as a pair (with a content id when it has none).
pub fn parse_pair(line: &str) -> Result<PreferencePair, serde_json::Error> {
    let mut pair: PreferencePair = serde_json::from_str(line)?;
    if pair.id.is_empty() {
        pair.id = content_id(&pair.prompt, &pair.chosen, &pair.rejected);
    }
    Ok(pair)
}

/// Reads every pair; a bad line is an error naming the file and line.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>, NodeError> {
    let pairs = stream_pairs(path)?
        .map(|r| r.map(|(_, p)| p))
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.is_empty() {
        return Err(NodeError::new(format!(
            "{}: no preference pairs (the file is empty)",
            data_file(path).display()
        )));
    }
    Ok(pairs)
}

/// What a dataset node did: rows read, rows written, rows dropped per reason (`stats.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Rows read.
    pub rows_in: usize,
    /// Rows written.
    pub rows_out: usize,
    /// Rows dropped, by reason.
    pub dropped: std::collections::BTreeMap<String, usize>,
    /// Where the rows came from, when a Hub repository: repo, revision, resolved commit sha, files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

impl Stats {
    /// Counts a dropped row.
    pub fn drop_for(&mut self, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
    }
}

/// A pair as one line of `data.jsonl` (without the newline).
pub fn pair_line(pair: &PreferencePair) -> String {
    serde_json::to_string(pair).expect("a preference pair serialises")
}

/// Writes a preference dataset artifact: `data.jsonl` row by row, then `stats.json`.
pub struct PairSink {
    out: std::io::BufWriter<std::fs::File>,
    dir: PathBuf,
    /// Counts so far.
    pub stats: Stats,
}

impl PairSink {
    /// Starts `dir/data.jsonl`.
    pub fn create(dir: &Path) -> Result<PairSink, NodeError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("data.jsonl");
        let file = std::fs::File::create(&path)
            .map_err(|e| NodeError::new(format!("{}: {e}", path.display())))?;
        Ok(PairSink {
            out: std::io::BufWriter::new(file),
            dir: dir.to_path_buf(),
            stats: Stats::default(),
        })
    }

    /// Appends a pair.
    pub fn write(&mut self, pair: &PreferencePair) -> Result<(), NodeError> {
        self.write_line(&pair_line(pair))
    }

    /// Appends a pair already serialised by [`pair_line`].
    pub fn write_line(&mut self, line: &str) -> Result<(), NodeError> {
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.stats.rows_out += 1;
        Ok(())
    }

    /// Flushes `data.jsonl` and writes `stats.json`; returns the stats.
    pub fn finish(mut self) -> Result<Stats, NodeError> {
        self.out.flush()?;
        let text = serde_json::to_string_pretty(&self.stats).expect("JSON");
        std::fs::write(self.dir.join("stats.json"), text)?;
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse_by_hand_as_the_derived_reader_did() {
        let text =
            r#"{"prompt":"a","chosen":"b","rejected":"c","system":null,"lang":"de","score":[1,2]}"#;
        let pair = parse_pair(text).unwrap();
        assert_eq!(pair.system, None);
        assert_eq!(pair.extra["score"], serde_json::json!([1, 2]));
        let back = parse_pair(&pair_line(&pair)).unwrap();
        assert_eq!(back, pair);
        let twice = r#"{"prompt":"a","prompt":"b","chosen":"b","rejected":"c"}"#;
        let error = parse_pair(twice).unwrap_err().to_string();
        assert!(error.contains("duplicate field `prompt`"), "{error}");
        let error = parse_pair("[1]").unwrap_err().to_string();
        assert!(error.contains("expected a preference pair"), "{error}");
    }

    #[test]
    fn reads_pairs_fills_ids_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\",\"lang\":\"de\"}\n\n{\"id\":\"x\",\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"d\"}\n").unwrap();
        let pairs = read_pairs(dir.path()).unwrap();
        assert_eq!(pairs[0].id, content_id("a", "b", "c"));
        assert_eq!(pairs[0].extra["lang"], "de");
        assert_eq!(pairs[1].id, "x");
        std::fs::write(
            &path,
            "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\":\"a\"}\n",
        )
        .unwrap();
        let err = read_pairs(&path).unwrap_err().message;
        assert!(
            err.contains("data.jsonl:2: not a preference pair: missing field `chosen`"),
            "{err}"
        );
        std::fs::write(&path, "").unwrap();
        assert!(
            read_pairs(&path)
                .unwrap_err()
                .message
                .contains("no preference pairs")
        );
    }
}
