//! The host path: the model run over host slices in f32 with the `gemm` crate's kernels, and its
//! backward pass written out layer by layer — full fine-tuning and reference scoring on the CPU
//! without an autodiff tape.
//!
//! Why a second path: burn's autodiff differentiates the model as a chain of generic tensor
//! ops, each saving its inputs (a softmax saves its scores, a SiLU four tensors, the attention
//! its repeated keys and values) and each making a pass over memory. Here every layer saves
//! its input, the RMSNorm scales, the roped queries and keys, the values, the attention's
//! log-sum-exps and output, and the MLP's gate and up projections (the rest is recomputed),
//! the output layer saves nothing but one log-sum-exp per row, and every elementwise step is
//! one vectorised loop. The arithmetic is the model's own: the same RoPE tables
//! ([`crate::arch::rope`]), RMSNorm and SwiGLU loops as the tensor path's host loops, and the
//! crate's tests compare both the log-probs and the gradients with burn's autodiff.
//!
//! Sequences are not padded: every linear layer runs over the concatenated tokens of the batch
//! and the attention over each sequence on its own (a right-padded batch gives the same values:
//! padding is never attended to). The weights are host slices in
//! [`crate::arch::weight_specs`] order, and gradients come back in that order too.
//!
//! Files: [`model`] (the weights, the forward pass and what it keeps), `backward` (the
//! backward pass), [`attention`], [`head`] (the output layer in vocabulary tiles), `ops`
//! (linear, RMSNorm, SwiGLU and RoPE over whole activations) and [`vector`] (the vectorised
//! loops). This room reads only [`crate::arch`] and the scored [`crate::sequence`]; it never
//! touches a tensor of the tensor path.

pub mod attention;
mod backward;
mod dims;
pub mod head;
pub mod lora;
pub mod model;
pub(crate) mod ops;
pub mod packing;
pub mod vector;

pub use lora::HostAdapter;
pub use model::{Forward, HostModel};
