//! Checkpoint files: safetensors (single or sharded with `model.safetensors.index.json`,
//! memory-mapped, f32 / bf16 / f16) in and out ([`safetensors`]). Bytes and names only: the
//! model types that fill themselves from these files live in the `tensor` room.

pub mod safetensors;
