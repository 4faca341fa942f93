//! The preference dataset artifact: a directory with `data.jsonl`, one pair per line with
//! `prompt`, `chosen`, `rejected` (strings), optional `system` and `id` (a content hash when the
//! source has none), and any extra columns kept.

use flow_engine::node::NodeError;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
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

/// `data.jsonl` inside a dataset directory, or the path itself when it is a file.
pub fn data_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("data.jsonl")
    } else {
        path.to_path_buf()
    }
}

/// Reads every pair; a bad line is an error naming the file and line.
pub fn read_pairs(path: &Path) -> Result<Vec<PreferencePair>, NodeError> {
    let file_path = data_file(path);
    let file = std::fs::File::open(&file_path)
        .map_err(|e| NodeError::new(format!("{}: {e}", file_path.display())))?;
    let mut pairs = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line =
            line.map_err(|e| NodeError::new(format!("{}:{}: {e}", file_path.display(), n + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut pair: PreferencePair = serde_json::from_str(&line).map_err(|e| {
            NodeError::new(format!(
                "{}:{}: not a preference pair: {e}",
                file_path.display(),
                n + 1
            ))
        })?;
        if pair.id.is_empty() {
            pair.id = content_id(&pair.prompt, &pair.chosen, &pair.rejected);
        }
        pairs.push(pair);
    }
    if pairs.is_empty() {
        return Err(NodeError::new(format!(
            "{}: no preference pairs (the file is empty)",
            file_path.display()
        )));
    }
    Ok(pairs)
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
