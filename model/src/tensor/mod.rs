//! The tensor path: the model as burn modules ([`mistral`]: config → modules → forward, the
//! KV cache, masks), LoRA adapters in PEFT's layout ([`lora`]) and a seeded initialisation
//! ([`init`]). It runs wherever burn runs (the CPU, CUDA), with autodiff, bf16 and gradient
//! checkpointing; on the CPU in f32 without gradients its norms, RoPE and SwiGLU call the host
//! path's loops.

pub mod adapter;
pub mod init;
pub mod lora;
pub mod model;
