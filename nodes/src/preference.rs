//! The preference dataset artifact: a directory with `data.jsonl`, one pair per line with
//! `prompt`, `chosen`, `rejected` (strings), optional `system` and `id` (a content hash when the
//! source has none), and any extra columns kept.

use flow_engine::node::NodeError;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One preference pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// System prompt, kept as metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Every other column, kept.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
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
                Ok(line) if line.trim().is_empty() => return None,
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
        serde_json::to_writer(&mut self.out, pair).map_err(|e| NodeError::new(e.to_string()))?;
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
