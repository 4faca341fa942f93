//! The output layer for evaluation and generation, where the trunk ran: [`OutputHead::Host`]
//! on the CPU (the fused, vectorised host loops of [`HostHead`]), [`OutputHead::Device`] on a
//! GPU, where the logits, log-softmax and gather stay on the device and only the chosen
//! log-probs (or one row of logits, for sampling) come back to the host.

use burn::prelude::*;
use burn::tensor::{DType, TensorData, activation};

use super::host::HostHead;
use crate::device::{is_host, to_f32};
use crate::tensor::model::Model;

/// The output layer of a model on its own device.
pub enum OutputHead {
    /// On the host (the model is on the CPU).
    Host(HostHead),
    /// On the model's device.
    Device(Box<DeviceHead>),
}

impl OutputHead {
    /// The head for `model`: on the host when the model is on the CPU (copies the lm_head
    /// once), else on the model's device (no copy).
    pub fn new(model: &Model) -> OutputHead {
        if is_host(&model.embed_tokens.device()) {
            OutputHead::Host(HostHead::new(model))
        } else {
            OutputHead::Device(Box::new(DeviceHead::new(model)))
        }
    }

    /// `log_softmax(cap(rows · Wᵀ))[targets[i]]` for each row `i` of `rows` (`[n, hidden]`), as
    /// f32 on the host.
    pub fn token_logps(&self, rows: Tensor<2>, targets: &[i64]) -> Vec<f32> {
        match self {
            OutputHead::Host(head) => head.token_logps(&to_f32(rows), targets),
            OutputHead::Device(head) => head.token_logps(rows, targets),
        }
    }

    /// The logits (`[vocab]`, soft-capped where the family does it) of the last row of `hidden`
    /// (`[rows, hidden]`).
    pub fn last_logits(&self, hidden: Tensor<2>) -> Vec<f32> {
        let [rows, _] = hidden.dims();
        let last = hidden.narrow(0, rows - 1, 1);
        match self {
            OutputHead::Host(head) => head.logits(&to_f32(last)),
            OutputHead::Device(head) => to_f32(head.logits(last)),
        }
    }
}

/// The output layer on a device: the lm_head stays where the model is, in f32.
pub struct DeviceHead {
    /// `Wᵀ`: `[hidden, vocab]`, f32, outside autodiff.
    weight_t: Tensor<2>,
    /// Gemma 2's `final_logit_softcapping`.
    softcap: Option<f64>,
}

impl DeviceHead {
    /// The head of `model` (a half-precision lm_head is cast to f32 once: the logits and
    /// log-softmax are computed in f32, as mixed precision asks).
    pub fn new(model: &Model) -> DeviceHead {
        DeviceHead {
            weight_t: model.lm_head_weight().inner().cast(DType::F32).transpose(),
            softcap: model.config.final_logit_softcapping,
        }
    }

    /// The logits of `rows` (`[n, hidden]`): `[n, vocab]`, f32, soft-capped where the family
    /// does it.
    pub fn logits(&self, rows: Tensor<2>) -> Tensor<2> {
        let logits = rows.inner().cast(DType::F32).matmul(self.weight_t.clone());
        match self.softcap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        }
    }

    /// Log-prob of `targets[i]` under row `i` of `rows`, a chunk of
    /// [`super::CHUNK_LOGIT_ELEMENTS`] logits at a time; only the `n` values leave the device.
    pub fn token_logps(&self, rows: Tensor<2>, targets: &[i64]) -> Vec<f32> {
        let device = rows.device();
        let vocab = self.weight_t.dims()[1];
        let rows_per_chunk = (super::CHUNK_LOGIT_ELEMENTS / vocab).max(1);
        let pieces: Vec<Tensor<1>> = targets
            .chunks(rows_per_chunk)
            .enumerate()
            .map(|(c, targets)| {
                let n = targets.len();
                let chunk = rows.clone().narrow(0, c * rows_per_chunk, n);
                let target =
                    Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &device);
                activation::log_softmax(self.logits(chunk), 1)
                    .gather(1, target)
                    .reshape([n])
            })
            .collect();
        if pieces.is_empty() {
            return Vec::new();
        }
        to_f32(Tensor::cat(pieces, 0))
    }
}
