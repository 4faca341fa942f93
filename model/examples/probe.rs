use flow_model::Mistral;
use flow_model::backprop::HostMistral;
use flow_model::bench::{BenchShape, bench_batch, bench_config, set_threads};
use flow_model::scoring::{HeadView, to_f32};
use std::time::Instant;

fn main() {
    set_threads(2).unwrap();
    let shape = BenchShape {
        hidden: 512,
        intermediate: 1408,
        layers: 4,
        heads: 8,
        kv_heads: 2,
        vocab: 32000,
        pairs: 4,
        seq: 256,
        repeats: 3,
    };
    let device = flow_model::cpu();
    let model = Mistral::random(&bench_config(&shape), 0, 0.02, &device);
    let weights: Vec<Vec<f32>> = model
        .weights()
        .into_iter()
        .map(|(_, w)| to_f32(w))
        .collect();
    let config = model.config.clone();
    let batch = bench_batch(&shape, 1);
    let host = HostMistral::new(&config, weights.iter().map(Vec::as_slice).collect());
    let rows: Vec<f32> = (0..1536 * 512)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let targets: Vec<i64> = (0..1536).map(|i| (i * 31) % 32000).collect();
    let head = HeadView {
        weight: weights.last().unwrap(),
        vocab: 32000,
        hidden: 512,
    };
    for round in 0..4 {
        let t = Instant::now();
        let f = host.token_logps(&batch);
        let all = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let h = head.token_logps(&rows, &targets);
        let head_s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: host scoring {all:.3}s, head alone {head_s:.3}s ({} {})",
            f[0], h[0]
        );
    }
}
