//! Rotary position embeddings' tables (Su et al. 2021), in the rotate-half layout of Hugging
//! Face checkpoints, computed as transformers computes them so both paths rotate alike.

/// RoPE's `cos` and `sin` tables `[len, head_dim]`, row-major: inv_freq in f32 as transformers
/// computes it, then the angle and its cosine and sine in f32.
pub fn rope_tables(len: usize, head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..head_dim)
        .map(|j| (1.0 / theta.powf((2 * (j % half)) as f64 / head_dim as f64)) as f32)
        .collect();
    let angles = (0..len).flat_map(|pos| inv_freq.iter().map(move |f| pos as f32 * f));
    angles.map(|a| (a.cos(), a.sin())).unzip()
}
