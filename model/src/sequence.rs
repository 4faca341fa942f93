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

impl Sequence {
    /// Checks that the sequence can be scored by a model of `vocab` tokens: a prompt token, a
    /// completion token, every id in the vocabulary. `n` names the sequence in the error.
    pub fn check(&self, n: usize, vocab: usize) -> crate::error::Result<()> {
        let problem = if self.completion_start == 0 {
            Some("no prompt token (a first token has no prediction to score)".to_string())
        } else if self.completion_start >= self.ids.len() {
            Some("no completion token".to_string())
        } else {
            self.ids
                .iter()
                .find(|&&id| id as usize >= vocab)
                .map(|id| format!("token id {id} is outside the model's vocabulary of {vocab}"))
        };
        match problem {
            Some(why) => Err(crate::error::ModelError::Argument(format!(
                "sequence {n} cannot be scored: {why}"
            ))),
            None => Ok(()),
        }
    }
}
