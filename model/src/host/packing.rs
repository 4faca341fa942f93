//! How a batch of sequences becomes host rows: unpadded, and — when consecutive sequences share
//! their first tokens, as a DPO pair's chosen and rejected share the prompt — with the shared
//! prefix computed once. A [`Group`] is a prefix's rows followed by the rows of each sequence's
//! tail; a tail's tokens attend to the prefix's keys and their own. Every value equals the
//! unshared computation (causal attention: a prefix's activations do not depend on what follows).

use crate::error::Result;
use crate::sequence::Sequence;
use crate::tokenize::common_prefix;

/// One group of consecutive rows: a prefix, then the tails of the sequences that continue it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The group's first row.
    pub first: usize,
    /// Rows of the prefix (a sequence alone: all of it).
    pub prefix: usize,
    /// Rows of each tail, in sequence order (none for a sequence alone).
    pub tails: Vec<usize>,
}

impl Group {
    /// Rows of the group.
    pub fn rows(&self) -> usize {
        self.prefix + self.tails.iter().sum::<usize>()
    }
}

/// A batch laid out in rows.
#[derive(Clone, Debug)]
pub struct Packed {
    /// Token of each row.
    pub ids: Vec<u32>,
    /// RoPE position of each row (its index in its sequence).
    pub positions: Vec<usize>,
    /// The groups, in row order.
    pub groups: Vec<Group>,
    /// The row that predicts each completion token, sequences in batch order.
    pub head_rows: Vec<usize>,
    /// Each completion token.
    pub targets: Vec<i64>,
    /// The longest sequence.
    pub longest: usize,
}

/// Lays `batch` out in rows; with `share`, each even-indexed sequence and the next share the
/// rows of their common first tokens. An error names a sequence that cannot be scored.
pub fn pack(batch: &[Sequence], vocab: usize, share: bool) -> Result<Packed> {
    for (n, seq) in batch.iter().enumerate() {
        seq.check(n, vocab)?;
    }
    let mut packed = Packed {
        ids: Vec::new(),
        positions: Vec::new(),
        groups: Vec::new(),
        head_rows: Vec::new(),
        targets: Vec::new(),
        longest: batch.iter().map(|s| s.ids.len()).max().unwrap_or(0),
    };
    let mut i = 0;
    while i < batch.len() {
        let pair = share && i + 1 < batch.len();
        let shared = match pair {
            true => common_prefix(&batch[i].ids, &batch[i + 1].ids),
            false => 0,
        };
        let members = if shared > 0 {
            &batch[i..i + 2]
        } else {
            &batch[i..i + 1]
        };
        packed.push_group(members, shared);
        i += members.len();
    }
    Ok(packed)
}

impl Packed {
    /// Appends a group of `members` sharing their first `shared` tokens (0: one sequence).
    fn push_group(&mut self, members: &[Sequence], shared: usize) {
        let first = self.ids.len();
        let prefix = if shared > 0 {
            shared
        } else {
            members[0].ids.len()
        };
        self.ids.extend_from_slice(&members[0].ids[..prefix]);
        self.positions.extend(0..prefix);
        let mut tails = Vec::new();
        for seq in members {
            let tail_first = self.ids.len();
            let tail = if shared > 0 {
                seq.ids.len() - prefix
            } else {
                0
            };
            self.ids.extend_from_slice(&seq.ids[prefix..prefix + tail]);
            self.positions.extend(prefix..prefix + tail);
            if shared > 0 {
                tails.push(tail);
            }
            let row_of = |position: usize| match position < prefix {
                true => first + position,
                false => tail_first + position - prefix,
            };
            for t in seq.completion_start..seq.ids.len() {
                self.head_rows.push(row_of(t - 1));
                self.targets.push(i64::from(seq.ids[t]));
            }
        }
        self.groups.push(Group {
            first,
            prefix,
            tails,
        });
    }
}

/// `x` (`width` values per row) split into each group's rows.
pub(super) fn split_by_groups<'s>(
    mut x: &'s mut [f32],
    groups: &[Group],
    width: usize,
) -> Vec<&'s mut [f32]> {
    let mut parts = Vec::with_capacity(groups.len());
    for group in groups {
        let (part, rest) = x.split_at_mut(group.rows() * width);
        parts.push(part);
        x = rest;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_shares_its_prompt_and_each_token_is_predicted_by_its_own_row() {
        let chosen = Sequence {
            ids: vec![1, 5, 6, 7, 8],
            completion_start: 3,
        };
        let rejected = Sequence {
            ids: vec![1, 5, 6, 9],
            completion_start: 3,
        };
        let packed = pack(&[chosen, rejected], 10, true).unwrap();
        assert_eq!(packed.ids, vec![1, 5, 6, 7, 8, 9]);
        assert_eq!(packed.positions, vec![0, 1, 2, 3, 4, 3]);
        assert_eq!(
            packed.groups,
            vec![Group {
                first: 0,
                prefix: 3,
                tails: vec![2, 1]
            }]
        );
        // chosen: 7 from row 2 (position 2), 8 from row 3; rejected: 9 from row 2.
        assert_eq!(packed.head_rows, vec![2, 3, 2]);
        assert_eq!(packed.targets, vec![7, 8, 9]);
        let alone = pack(
            &[Sequence {
                ids: vec![1, 2, 3],
                completion_start: 1,
            }],
            10,
            true,
        )
        .unwrap();
        assert_eq!(
            alone.groups[0],
            Group {
                first: 0,
                prefix: 3,
                tails: vec![]
            }
        );
    }
}
