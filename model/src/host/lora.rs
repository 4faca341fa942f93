//! LoRA on the host path (Hu et al. 2021, as PEFT computes it): on a projection `W` (`[out, in]`)
//! the output gains `s · dropout(x) Aᵀ Bᵀ` with `A` `[r, in]`, `B` `[out, r]` and `s = α / r`
//! (`α / √r` with rsLoRA). The base weight stays frozen: the backward pass computes only the
//! adapters' gradients and the input's,
//!
//! `dB += dyᵀ · (s·u)`, `du = s · dy B`, `dA += duᵀ · x̃`, `dx += (du A) ⊙ m`,
//!
//! with `u = x̃ Aᵀ`, `x̃ = x ⊙ m` and `m` the dropout mask (each element kept with probability
//! `1 − p` and scaled by `1 / (1 − p)`), drawn from a seed so a resumed run draws the same masks.

use rayon::prelude::*;

use super::vector::{Layout, matmul};
use crate::rng::SplitMix64;

/// One adapter's tensors and settings, over host slices.
#[derive(Clone, Copy, Debug)]
pub struct HostAdapter<'a> {
    /// `[r, in]`.
    pub a: &'a [f32],
    /// `[out, r]`.
    pub b: &'a [f32],
    /// The rank `r`.
    pub rank: usize,
    /// `α / r` (or `α / √r`).
    pub scale: f32,
    /// Dropout probability of the adapter's input.
    pub dropout: f32,
    /// Seed of this forward pass's dropout mask.
    pub seed: u64,
}

/// What an adapter's backward pass needs from its forward pass.
pub(super) struct AdapterSaved {
    /// `s · x̃ Aᵀ`, `[n, r]`.
    scaled_u: Vec<f32>,
    /// The dropout mask `[n, in]`, when the adapter drops anything.
    mask: Option<Vec<f32>>,
}

impl HostAdapter<'_> {
    fn input(&self) -> usize {
        self.a.len() / self.rank
    }

    fn output(&self) -> usize {
        self.b.len() / self.rank
    }

    /// The dropout mask of `n` rows (`None` without dropout).
    fn mask(&self, n: usize) -> Option<Vec<f32>> {
        if self.dropout <= 0.0 {
            return None;
        }
        let mut rng = SplitMix64::new(self.seed);
        let keep = 1.0 / (1.0 - self.dropout);
        let p = f64::from(self.dropout);
        Some(
            (0..n * self.input())
                .map(|_| if rng.next_f64() > p { keep } else { 0.0 })
                .collect(),
        )
    }

    /// `x ⊙ mask`, or `x` itself.
    fn dropped<'x>(x: &'x [f32], mask: &Option<Vec<f32>>) -> std::borrow::Cow<'x, [f32]> {
        match mask {
            Some(mask) => x.iter().zip(mask).map(|(x, m)| x * m).collect(),
            None => std::borrow::Cow::Borrowed(x),
        }
    }

    /// Adds `s · dropout(x) Aᵀ Bᵀ` to `y` (`[n, out]`) for `x` `[n, in]`.
    pub(super) fn forward(&self, x: &[f32], y: &mut [f32]) -> AdapterSaved {
        let (input, out, r) = (self.input(), self.output(), self.rank);
        let n = x.len() / input;
        let mask = self.mask(n);
        let dropped = Self::dropped(x, &mask);
        let mut scaled_u = vec![0f32; n * r];
        matmul(
            (&mut scaled_u, Layout::dense(n, r)),
            (&dropped, Layout::dense(n, input)),
            (self.a, Layout::dense(r, input).t()),
            false,
            true,
        );
        scaled_u.par_iter_mut().for_each(|u| *u *= self.scale);
        matmul(
            (y, Layout::dense(n, out)),
            (&scaled_u, Layout::dense(n, r)),
            (self.b, Layout::dense(out, r).t()),
            true,
            true,
        );
        AdapterSaved { scaled_u, mask }
    }

    /// The backward pass for `dy` (`[n, out]`) and the forward's input `x`: adds the adapter's
    /// gradients to `d_a` and `d_b` and the input's to `dx`.
    pub(super) fn backward(
        &self,
        dy: &[f32],
        x: &[f32],
        saved: &AdapterSaved,
        dx: &mut [f32],
        (d_a, d_b): (&mut [f32], &mut [f32]),
    ) {
        let (input, out, r) = (self.input(), self.output(), self.rank);
        let n = x.len() / input;
        matmul(
            (d_b, Layout::dense(out, r)),
            (dy, Layout::dense(n, out).t()),
            (&saved.scaled_u, Layout::dense(n, r)),
            true,
            true,
        );
        let mut du = vec![0f32; n * r];
        matmul(
            (&mut du, Layout::dense(n, r)),
            (dy, Layout::dense(n, out)),
            (self.b, Layout::dense(out, r)),
            false,
            true,
        );
        du.par_iter_mut().for_each(|d| *d *= self.scale);
        let dropped = Self::dropped(x, &saved.mask);
        matmul(
            (d_a, Layout::dense(r, input)),
            (&du, Layout::dense(n, r).t()),
            (&dropped, Layout::dense(n, input)),
            true,
            true,
        );
        match &saved.mask {
            None => matmul(
                (dx, Layout::dense(n, input)),
                (&du, Layout::dense(n, r)),
                (self.a, Layout::dense(r, input)),
                true,
                true,
            ),
            Some(mask) => {
                let mut d_dropped = vec![0f32; n * input];
                matmul(
                    (&mut d_dropped, Layout::dense(n, input)),
                    (&du, Layout::dense(n, r)),
                    (self.a, Layout::dense(r, input)),
                    false,
                    true,
                );
                dx.par_iter_mut()
                    .zip(d_dropped.par_iter().zip(mask.par_iter()))
                    .for_each(|(dx, (d, m))| *dx += d * m);
            }
        }
    }
}
