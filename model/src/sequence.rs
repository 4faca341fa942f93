//! A sequence to score: its ids and where its completion starts. The one type every room that
//! tokenizes, scores or trains passes around.

/// A sequence to score: prompt and completion ids, and where the completion starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Prompt ids followed by completion ids.
    pub ids: Vec<u32>,
    /// Index of the first completion token (≥ 1: the first token has no prediction).
    pub completion_start: usize,
}

impl Sequence {
    /// Number of scored (completion) tokens.
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.completion_start
    }
}
