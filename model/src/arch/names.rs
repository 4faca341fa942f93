//! Checkpoint names: every weight of a model with its name in the checkpoint, its shape there,
//! and the 2-D shape flow holds it in. Both execution paths (`host` and
//! `tensor`) and the checkpoint readers take the weights in this order.

use super::config::MistralConfig;

/// A checkpoint tensor: its name, its shape in the file, and the 2-D shape the model holds.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    /// Name in the checkpoint (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape in the checkpoint.
    pub file_shape: Vec<usize>,
    /// Shape in the model (`[1, n]` for 1-D weights).
    pub shape: [usize; 2],
}

fn spec(name: String, file_shape: &[usize]) -> WeightSpec {
    let shape = match file_shape {
        [n] => [1, *n],
        [rows, cols] => [*rows, *cols],
        _ => unreachable!("Mistral weights are 1-D or 2-D"),
    };
    WeightSpec {
        name,
        file_shape: file_shape.to_vec(),
        shape,
    }
}

/// Every weight of a Mistral with this config, in checkpoint order: the one place names are mapped.
pub fn weight_specs(c: &MistralConfig) -> Vec<WeightSpec> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let mut specs = vec![spec("model.embed_tokens.weight".into(), &[v, h])];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        specs.push(spec(format!("{p}.input_layernorm.weight"), &[h]));
        specs.push(spec(format!("{p}.self_attn.q_proj.weight"), &[q, h]));
        specs.push(spec(format!("{p}.self_attn.k_proj.weight"), &[kv, h]));
        specs.push(spec(format!("{p}.self_attn.v_proj.weight"), &[kv, h]));
        specs.push(spec(format!("{p}.self_attn.o_proj.weight"), &[h, q]));
        specs.push(spec(format!("{p}.post_attention_layernorm.weight"), &[h]));
        specs.push(spec(format!("{p}.mlp.gate_proj.weight"), &[i, h]));
        specs.push(spec(format!("{p}.mlp.up_proj.weight"), &[i, h]));
        specs.push(spec(format!("{p}.mlp.down_proj.weight"), &[h, i]));
    }
    specs.push(spec("model.norm.weight".into(), &[h]));
    if !c.tie_word_embeddings {
        specs.push(spec("lm_head.weight".into(), &[v, h]));
    }
    specs
}

impl MistralConfig {
    /// Parameter count.
    pub fn parameter_count(&self) -> usize {
        weight_specs(self)
            .iter()
            .map(|s| s.file_shape.iter().product::<usize>())
            .sum()
    }
}
