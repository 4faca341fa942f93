//! Rotary position embeddings (Su et al. 2021) in the rotate-half layout of Hugging Face
//! checkpoints, with the frequency scalings transformers implements for these families
//! (`modeling_rope_utils.py`): `default`, `linear`, `dynamic` (NTK) and `llama3`.
//!
//! Frequencies follow torch's float32 arithmetic: `inv_freq[j] = 1 / θ^(2j/d)` with the power
//! taken of the f32 inputs and rounded to f32, then an f32 reciprocal; the angle of position
//! `p` is `f32(p) · inv_freq[j]`, and its cosine and sine are taken in f32.

use serde_json::{Value as Json, json};

/// How the frequencies are scaled (`rope_parameters.rope_type`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: plain RoPE.
    Default,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `dynamic` (NTK-aware): beyond `max_position_embeddings` the base grows with the length.
    Dynamic {
        /// Scaling factor.
        factor: f64,
        /// The length beyond which the base grows (the config's `max_position_embeddings`).
        max_position_embeddings: usize,
    },
    /// `llama3`: long wavelengths divided by `factor`, short ones kept, a smooth ramp between
    /// (Llama 3.1 and later).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled fully.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: usize,
    },
}

/// A model's RoPE: the base and the scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// `rope_theta`, the base.
    pub theta: f64,
    /// The frequency scaling.
    pub scaling: RopeScaling,
}

impl Rope {
    /// Plain RoPE with base `theta`.
    pub fn plain(theta: f64) -> Rope {
        Rope {
            theta,
            scaling: RopeScaling::Default,
        }
    }

    /// Checks the scaling's numbers: every factor positive, `high_freq_factor` above
    /// `low_freq_factor` (transformers divides by their difference).
    pub fn check(&self) -> Result<(), String> {
        let bad = |key: &str, v: f64| {
            Err(format!(
                "`rope_parameters.{key}` must be a positive number, found {v}"
            ))
        };
        match self.scaling {
            RopeScaling::Default => Ok(()),
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. } => {
                if factor.is_finite() && factor > 0.0 {
                    Ok(())
                } else {
                    bad("factor", factor)
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                for (key, v) in [
                    ("factor", factor),
                    ("low_freq_factor", low_freq_factor),
                    ("high_freq_factor", high_freq_factor),
                    (
                        "original_max_position_embeddings",
                        original_max_position_embeddings as f64,
                    ),
                ] {
                    if !(v.is_finite() && v > 0.0) {
                        return bad(key, v);
                    }
                }
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "`rope_parameters.high_freq_factor` ({high_freq_factor}) must exceed `low_freq_factor` ({low_freq_factor})"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The `rope_type` name transformers uses.
    pub fn rope_type(&self) -> &'static str {
        match self.scaling {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
        }
    }

    /// `rope_parameters` as transformers 5 writes it.
    pub fn to_json(&self) -> Json {
        let mut value = json!({ "rope_theta": self.theta, "rope_type": self.rope_type() });
        match self.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor, .. } => {
                value["factor"] = json!(factor);
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                value["factor"] = json!(factor);
                value["low_freq_factor"] = json!(low_freq_factor);
                value["high_freq_factor"] = json!(high_freq_factor);
                value["original_max_position_embeddings"] = json!(original_max_position_embeddings);
            }
        }
        value
    }

    /// The `head_dim / 2` inverse frequencies for sequences of up to `len` positions (only
    /// `dynamic` depends on the length: transformers grows its base from the longest position
    /// of the batch).
    pub fn inv_freq(&self, head_dim: usize, len: usize) -> Vec<f32> {
        let theta = match self.scaling {
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } if len > max_position_embeddings => {
                let (factor, d) = (factor as f32, head_dim as f32);
                let grown = factor * len as f32 / max_position_embeddings as f32 - (factor - 1.0);
                f64::from(self.theta as f32 * powf32(grown, d / (d - 2.0)))
            }
            _ => self.theta,
        };
        let base: Vec<f32> = (0..head_dim / 2)
            .map(|j| 1.0 / powf32(theta as f32, (2 * j) as f32 / head_dim as f32))
            .collect();
        match self.scaling {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => base,
            RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (
                    (old / low_freq_factor) as f32,
                    (old / high_freq_factor) as f32,
                );
                let (factor, low, span) = (
                    factor as f32,
                    low_freq_factor as f32,
                    (high_freq_factor - low_freq_factor) as f32,
                );
                base.iter()
                    .map(|&f| {
                        let wavelen = (1.0 / f) * std::f64::consts::TAU as f32;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        if wavelen < high_wavelen || wavelen > low_wavelen {
                            return scaled;
                        }
                        let smooth = ((1.0 / wavelen) * old as f32 - low) / span;
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    })
                    .collect()
            }
        }
    }

    /// `cos` and `sin` tables `[len, head_dim]`, row-major, for positions `0..len` (each half of
    /// a row repeats the frequencies, as `torch.cat((freqs, freqs))`).
    pub fn tables(&self, len: usize, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
        let inv_freq = self.inv_freq(head_dim, len);
        let angles = (0..len).flat_map(|pos| {
            let inv_freq = &inv_freq;
            (0..head_dim).map(move |j| pos as f32 * inv_freq[j % (head_dim / 2)])
        });
        angles.map(|a| (a.cos(), a.sin())).unzip()
    }
}

/// `base^exponent` as torch computes it for f32 tensors: in f64 from the f32 inputs, rounded.
fn powf32(base: f32, exponent: f32) -> f32 {
    f64::from(base).powf(f64::from(exponent)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_short_wavelengths_and_divides_long_ones() {
        let rope = Rope {
            theta: 500000.0,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            },
        };
        let plain = Rope::plain(500000.0).inv_freq(16, 10);
        let scaled = rope.inv_freq(16, 10);
        assert_eq!(scaled[0], plain[0], "wavelength 2π < 16 is kept");
        let last = plain.len() - 1;
        assert_eq!(
            scaled[last],
            plain[last] / 8.0,
            "the longest wavelength is divided"
        );
        assert!(
            scaled
                .iter()
                .zip(&plain)
                .all(|(s, p)| s <= p && *s >= p / 8.0)
        );
    }

    #[test]
    fn linear_and_dynamic_scale_as_transformers() {
        let linear = Rope {
            theta: 10000.0,
            scaling: RopeScaling::Linear { factor: 2.0 },
        };
        let plain = Rope::plain(10000.0).inv_freq(8, 4);
        assert_eq!(
            linear.inv_freq(8, 4),
            plain.iter().map(|f| f / 2.0).collect::<Vec<_>>()
        );
        let dynamic = Rope {
            theta: 10000.0,
            scaling: RopeScaling::Dynamic {
                factor: 2.0,
                max_position_embeddings: 16,
            },
        };
        assert_eq!(
            dynamic.inv_freq(8, 16),
            plain,
            "unchanged up to the trained length"
        );
        let grown = dynamic.inv_freq(8, 32);
        assert_eq!(grown[0], 1.0);
        assert!(grown[1] < plain[1], "a longer input lowers the frequencies");
    }
}
