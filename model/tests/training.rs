//! DPO training against TRL 1.16 (tests/fixtures/mistral-tiny/golden.json): every loss and
//! metric, the gradient of the sigmoid loss, three real training steps (AdamW, linear schedule
//! with warm-up, clipping), learning-rate multipliers; plus LoRA, β schedules and resuming.

use burn::tensor::{DType, TensorData};
use flow_model::device::to_f64;
use flow_model::scoring::Scorer;
use flow_model::tensor::lora::{self, LoraConfig};
use flow_model::tokenize::TokenizedPair;
use flow_model::train::dpo::{LossConfig, LossType, PairLogps, preference_loss};
use flow_model::train::optim::AdamWConfig;
use flow_model::train::schedule::{BetaSchedule, BetaShape, LrScheduler};
use flow_model::train::{Example, Objective, Record, Schedule, TrainConfig, Trainer};
use flow_model::{Device, Model, Tensor, cpu, is_host};
use serde_json::Value;

mod common;
use common::{
    FAMILIES, assert_close, assert_relative, fixtures, floats, golden, golden_of, ids, test_device,
};

fn pairs(g: &Value) -> &Vec<Value> {
    g["pairs"].as_array().unwrap()
}

/// The golden pairs as training examples with TRL's reference log-probs.
fn golden_examples(g: &Value) -> Vec<Example> {
    pairs(g)
        .iter()
        .enumerate()
        .map(|(i, p)| Example {
            id: format!("pair-{i}"),
            pair: TokenizedPair {
                prompt_ids: ids(&p["prompt_ids"]),
                chosen_ids: ids(&p["chosen_ids"]),
                rejected_ids: ids(&p["rejected_ids"]),
                cut: [0, 0],
            },
            reference: Some([
                p["ref_chosen_logps"].as_f64().unwrap(),
                p["ref_rejected_logps"].as_f64().unwrap(),
            ]),
        })
        .collect()
}

fn policy() -> Model {
    policy_of("mistral-tiny")
}

fn policy_of(family: &str) -> Model {
    policy_on(family, &cpu())
}

fn policy_on(family: &str, device: &Device) -> Model {
    Model::load(&fixtures().join(family).join("policy"), device).unwrap()
}

/// A sigmoid-DPO (β 0.1) trainer of the Mistral fixture policy on the golden pairs.
fn golden_trainer(g: &Value, config: TrainConfig) -> Trainer {
    golden_trainer_of("mistral-tiny", g, config)
}

/// A sigmoid-DPO (β 0.1) trainer of `family`'s fixture policy on its golden pairs.
fn golden_trainer_of(family: &str, g: &Value, config: TrainConfig) -> Trainer {
    golden_trainer_on(family, g, config, &cpu())
}

/// [`golden_trainer_of`] on `device`.
fn golden_trainer_on(family: &str, g: &Value, config: TrainConfig, device: &Device) -> Trainer {
    Trainer::new(
        policy_on(family, device),
        config,
        sigmoid_objective(trl_beta(g)),
        golden_examples(g),
        Vec::new(),
        device.clone(),
    )
    .unwrap()
}

/// The β of TRL's `train_3_steps`.
fn trl_beta(g: &Value) -> f64 {
    g["train_3_steps"]["args"]["beta"].as_f64().unwrap()
}

/// TRL's `train_3_steps` settings.
fn trl_config(g: &Value) -> TrainConfig {
    let args = &g["train_3_steps"]["args"];
    TrainConfig {
        learning_rate: args["learning_rate"].as_f64().unwrap(),
        lr_scheduler: LrScheduler::Linear,
        warmup_steps: args["warmup_steps"].as_u64().unwrap() as usize,
        max_steps: Some(args["max_steps"].as_u64().unwrap() as usize),
        epochs: 1,
        batch_size: pairs(g).len(),
        grad_accum: 1,
        max_grad_norm: args["max_grad_norm"].as_f64(),
        adam: AdamWConfig {
            betas: (0.9, 0.999),
            eps: args["eps"].as_f64().unwrap(),
            weight_decay: args["weight_decay"].as_f64().unwrap(),
        },
        seed: 42,
        lora: None,
        gradient_checkpointing: false,
        compute_dtype: burn::tensor::DType::F32,
        autodiff: false,
    }
}

fn sigmoid_objective(beta: f64) -> Objective {
    Objective::Dpo {
        loss: LossConfig {
            loss: LossType::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.0,
        },
        beta: BetaSchedule::Constant(beta),
    }
}

/// Collects records.
#[derive(Default)]
struct Log(Vec<Record>);

impl flow_model::train::Observer for Log {
    fn record(&mut self, record: &Record) -> flow_model::Result<()> {
        self.0.push(record.clone());
        Ok(())
    }
}

#[test]
fn every_loss_and_metric_matches_trl() {
    for family in FAMILIES {
        losses_and_metrics_match_trl(&golden_of(family));
    }
}

fn losses_and_metrics_match_trl(g: &Value) {
    let g = g.clone();
    let device = cpu();
    let column = |key: &str| {
        let values: Vec<f64> = pairs(&g).iter().map(|p| p[key].as_f64().unwrap()).collect();
        Tensor::<1>::from_data(
            TensorData::new(values, [pairs(&g).len()]),
            (&device, DType::F64),
        )
    };
    let batch = PairLogps {
        policy_chosen: column("policy_chosen_logps"),
        policy_rejected: column("policy_rejected_logps"),
        reference: golden_examples(&g)
            .iter()
            .map(|e| e.reference.unwrap())
            .collect(),
        lengths: golden_examples(&g)
            .iter()
            .map(|e| [e.pair.chosen_ids.len(), e.pair.rejected_ids.len()])
            .collect(),
    };
    let cases = [
        ("sigmoid", LossType::Sigmoid, 0.1, 0.0, 0.0),
        ("hinge", LossType::Hinge, 0.1, 0.0, 0.0),
        ("ipo", LossType::Ipo, 0.1, 0.0, 0.0),
        ("robust_ls0.1", LossType::Robust, 0.1, 0.1, 0.0),
        ("cdpo_ls0.1", LossType::Cdpo, 0.1, 0.1, 0.0),
        ("sigmoid_norm", LossType::SigmoidNorm, 0.1, 0.0, 0.0),
        ("simpo_beta2_gamma0.5", LossType::Simpo, 2.0, 0.0, 0.5),
        (
            "reference_free_sigmoid",
            LossType::ReferenceFree,
            0.1,
            0.0,
            0.0,
        ),
    ];
    let losses = &g["losses"];
    for (name, loss, beta, label_smoothing, simpo_gamma) in cases {
        let config = LossConfig {
            loss,
            label_smoothing,
            simpo_gamma,
        };
        let (value, _) = preference_loss(&config, beta, &batch);
        assert_relative(to_f64(value)[0], losses[name].as_f64().unwrap(), 1e-5, name);
    }
    let sigmoid = LossConfig {
        loss: LossType::Sigmoid,
        label_smoothing: 0.0,
        simpo_gamma: 0.0,
    };
    let (_, m) = preference_loss(&sigmoid, 0.1, &batch);
    let metrics = [
        ("rewards/chosen", m.rewards_chosen),
        ("rewards/rejected", m.rewards_rejected),
        ("rewards/accuracies", m.rewards_accuracies),
        ("rewards/margins", m.rewards_margins),
        ("logps/chosen", m.logps_chosen),
        ("logps/rejected", m.logps_rejected),
    ];
    for (name, value) in metrics {
        assert_relative(value, losses[name].as_f64().unwrap(), 1e-5, name);
    }
}

#[test]
fn learning_rate_multipliers_are_transformers_exactly() {
    let g = golden();
    let schedules = &g["lr_schedules_warmup5_total20"];
    for (name, scheduler) in [
        ("linear", LrScheduler::Linear),
        ("cosine", LrScheduler::Cosine),
        ("constant_with_warmup", LrScheduler::ConstantWithWarmup),
        ("cosine_with_restarts", LrScheduler::CosineWithRestarts),
    ] {
        let ours: Vec<f64> = (0..20).map(|s| scheduler.multiplier(s, 5, 20)).collect();
        assert_eq!(ours, floats(&schedules[name]), "{name}");
    }
}

#[test]
fn three_trl_steps_give_trls_losses_gradients_and_weights() {
    for family in FAMILIES {
        three_trl_steps(family, false, &cpu());
    }
}

#[test]
fn three_trl_steps_through_autodiff_give_trls_weights() {
    // Through burn's autodiff (the path of bf16 and GPUs) instead of the host backward pass.
    for family in FAMILIES {
        three_trl_steps(family, true, &cpu());
    }
}

/// The absolute error a device may add to a reward metric of the sigmoid objective with `beta`:
/// β · 1e-4 for each log-prob sum in it (`rewards/chosen` and `rewards/rejected` take two, a
/// policy and a reference sum; `rewards/margins` four); `None` for the other metrics.
fn reward_floor(metric: &str, beta: f64) -> Option<f64> {
    let sums = match metric {
        "rewards/chosen" | "rewards/rejected" => 2.0,
        "rewards/margins" => 4.0,
        _ => return None,
    };
    Some(beta * 1e-4 * sums)
}

/// TRL's three steps on `family` on `device`, on the host path or (`tape`, and always off the
/// CPU) through burn's autodiff.
fn three_trl_steps(family: &str, tape: bool, device: &Device) {
    let g = golden_of(family);
    let config = TrainConfig {
        autodiff: tape,
        ..trl_config(&g)
    };
    let mut trainer = golden_trainer_on(family, &g, config, device);
    let mut log = Log::default();
    trainer.run(&Schedule::default(), &mut log).unwrap();
    let trl_log = g["train_3_steps"]["log"].as_array().unwrap();
    assert_eq!(log.0.len(), 3);
    for (ours, theirs) in log.0.iter().zip(trl_log) {
        let step = ours.get("step").unwrap();
        for name in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "logps/chosen",
            "logps/rejected",
        ] {
            let tolerance = if step == 3.0 { 1e-3 } else { 1e-4 };
            let (ours, theirs) = (ours.get(name).unwrap(), theirs[name].as_f64().unwrap());
            let what = format!("{family} step {step} {name}");
            match reward_floor(name, trl_beta(&g)) {
                // A reward is β times a difference of nearly equal log-prob sums, so its
                // relative error is theirs magnified: off the host, where sums differ by up to
                // 1e-4 (their tolerance in fidelity.rs), it may differ by β·1e-4 per sum.
                Some(floor) if !is_host(device) => assert!(
                    (ours - theirs).abs() <= (tolerance * theirs.abs()).max(floor),
                    "{what}: {ours} vs {theirs} (relative tolerance {tolerance} or {floor})"
                ),
                _ => assert_relative(ours, theirs, tolerance, &what),
            }
        }
        assert_relative(
            ours.get("grad_norm").unwrap(),
            theirs["grad_norm"].as_f64().unwrap(),
            1e-3,
            &format!("{family} step {step} grad_norm"),
        );
        assert_eq!(
            ours.get("learning_rate").unwrap(),
            theirs["learning_rate"].as_f64().unwrap(),
            "{family} step {step} learning_rate"
        );
    }
    let after = &g["train_3_steps"]["params_after_first8"];
    let trained = trainer.policy().weights();
    for (name, expected) in after.as_object().unwrap() {
        let tensor = &trained.iter().find(|(n, _)| n == name).unwrap().1;
        let first8 = &to_f64(tensor.clone().flatten::<1>(0, 1))[..8];
        assert_close(first8, &floats(expected), 1e-5, &format!("{family} {name}"));
    }
}

#[test]
fn sigmoid_loss_gradient_matches_trl() {
    for family in FAMILIES {
        for tape in [false, true] {
            sigmoid_gradient(family, tape, &cpu());
        }
    }
}

/// The gradient of TRL's batch loss on `family` on `device`, on the host path or through burn's
/// autodiff.
fn sigmoid_gradient(family: &str, tape: bool, device: &Device) {
    let g = golden_of(family);
    let config = TrainConfig {
        max_steps: Some(1),
        learning_rate: 0.0,
        autodiff: tape,
        ..trl_config(&g)
    };
    let mut trainer = golden_trainer_on(family, &g, config, device);
    let (record, grads) = trainer.gradients().unwrap();
    assert_relative(
        record.get("loss").unwrap(),
        g["trl_batch_loss_sigmoid"].as_f64().unwrap(),
        1e-5,
        &format!("{family} loss"),
    );
    assert_relative(
        record.get("grad_norm").unwrap(),
        g["grad"]["global_l2_norm"].as_f64().unwrap(),
        1e-3,
        &format!("{family} (autodiff {tape}) global norm"),
    );
    for (name, expected) in g["grad"]["first8"].as_object().unwrap() {
        let (_, grad) = grads.iter().find(|(n, _)| n == name).unwrap();
        let ours: Vec<f64> = grad[..8].iter().map(|&x| f64::from(x)).collect();
        for (i, (a, e)) in ours.iter().zip(floats(expected)).enumerate() {
            assert!(
                (a - e).abs() <= 1e-3 * e.abs().max(1e-3),
                "{family} (autodiff {tape}) {name}[{i}]: {a} vs {e}"
            );
        }
    }
}

#[test]
fn bf16_mixed_precision_keeps_f32_masters_and_stays_close_to_trl() {
    // bf16 rounds weights and activations to 8 significant bits; loss and log-softmax stay f32,
    // so the loss moves by well under a percent and the gradient's norm by a few percent.
    let g = golden();
    let config = TrainConfig {
        max_steps: Some(1),
        compute_dtype: DType::BF16,
        ..trl_config(&g)
    };
    let mut trainer = golden_trainer(&g, config);
    let (record, grads) = trainer.gradients().unwrap();
    let loss = record.get("loss").unwrap();
    let norm = record.get("grad_norm").unwrap();
    eprintln!("bf16 loss {loss}, grad norm {norm}");
    assert_relative(
        loss,
        g["trl_batch_loss_sigmoid"].as_f64().unwrap(),
        1e-2,
        "loss",
    );
    assert_relative(
        norm,
        g["grad"]["global_l2_norm"].as_f64().unwrap(),
        5e-2,
        "norm",
    );
    assert!(
        grads
            .iter()
            .all(|(_, grad)| grad.iter().all(|x| x.is_finite()))
    );
    let step = trainer.train_step().unwrap();
    assert!(step.get("loss").unwrap().is_finite());
    // The master weights are host f32 (Param::value is a Vec<f32>); the policy reads them in f32.
    assert_eq!(trainer.policy().embed_tokens.dtype(), DType::F32);
}

#[test]
fn beta_schedule_is_applied_and_logged_per_step() {
    let g = golden();
    let config = TrainConfig {
        max_steps: Some(4),
        batch_size: 2,
        ..trl_config(&g)
    };
    let objective = Objective::Dpo {
        loss: LossConfig {
            loss: LossType::Sigmoid,
            label_smoothing: 0.0,
            simpo_gamma: 0.0,
        },
        beta: BetaSchedule::Ramp {
            shape: BetaShape::Linear,
            from: 0.4,
            to: 0.1,
            steps: Some(3),
        },
    };
    let mut trainer = Trainer::new(
        policy(),
        config,
        objective,
        golden_examples(&g),
        Vec::new(),
        cpu(),
    )
    .unwrap();
    let mut log = Log::default();
    trainer.run(&Schedule::default(), &mut log).unwrap();
    let betas: Vec<f64> = log.0.iter().map(|r| r.get("beta").unwrap()).collect();
    assert_close(&betas, &[0.4, 0.3, 0.2, 0.1], 1e-12, "β per step");
    // With zero learning rate at step 1 (warm-up), the policy is the fixture's, so the loss is
    // the sigmoid loss of that batch at β = 0.4: check the logged loss follows β.
    let first = &log.0[0];
    let margin = first.get("rewards/margins").unwrap() / 0.4;
    let expected = (1.0 + (-0.4 * margin).exp()).ln();
    assert!(
        first.get("loss").unwrap() > 0.0 && (first.get("loss").unwrap() - expected).abs() < 0.5,
        "loss {} vs a single-margin estimate {expected}",
        first.get("loss").unwrap()
    );
}

fn lora_config() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        use_rslora: false,
    }
}

#[test]
fn lora_with_zero_b_is_the_base_model_and_saves_in_peft_layout() {
    let g = golden();
    let base = policy();
    let mut adapted = base.clone();
    lora::attach(&mut adapted, &lora_config(), 1);
    let examples = golden_examples(&g);
    let sequences: Vec<_> = examples.iter().flat_map(|e| e.pair.sequences()).collect();
    let device = cpu();
    let plain = Scorer::new(base.clone())
        .score(&sequences, &device)
        .unwrap()
        .sums;
    let with_adapters = Scorer::new(adapted.clone())
        .score(&sequences, &device)
        .unwrap()
        .sums;
    assert_eq!(plain, with_adapters, "B = 0: the adapter changes nothing");

    // Train the adapters a few steps, save as PEFT, load back: same scores, merged the same too.
    let config = TrainConfig {
        lora: Some(lora_config()),
        max_steps: Some(3),
        learning_rate: 1e-2,
        ..trl_config(&g)
    };
    let mut trainer = Trainer::new(
        base.clone(),
        config,
        sigmoid_objective(0.1),
        examples,
        Vec::new(),
        cpu(),
    )
    .unwrap();
    trainer
        .run(&Schedule::default(), &mut Log::default())
        .unwrap();
    let trained = trainer.policy();
    let trained_scores = flow_model::scoring::score(&trained, &sequences, &device)
        .unwrap()
        .sums;
    let dir = tempfile::tempdir().unwrap();
    lora::save_peft(&trained, &lora_config(), "tiny", dir.path()).unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64()),
        (Some("LORA"), Some(4))
    );
    let file = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&file).unwrap();
    let a = tensors
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    let b = tensors
        .tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
        .unwrap();
    assert_eq!((a.shape(), b.shape()), (&[4, 64][..], &[64, 4][..]));
    assert_eq!(
        tensors.len(),
        2 * 2 * 3,
        "A and B for 3 targets in 2 layers"
    );
    let mut loaded = base.clone();
    lora::load_peft(&mut loaded, dir.path()).unwrap();
    let reloaded = flow_model::scoring::score(&loaded, &sequences, &device)
        .unwrap()
        .sums;
    let merged = flow_model::scoring::score(&lora::merged(&trained), &sequences, &device)
        .unwrap()
        .sums;
    let (t, r, m) = (to_f64(trained_scores), to_f64(reloaded), to_f64(merged));
    assert_close(&r, &t, 1e-9, "reloaded adapter");
    assert_close(&m, &t, 1e-3, "merged adapter");
    assert!(
        t.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3),
        "training moved the adapters"
    );
}

#[test]
fn resuming_from_a_checkpoint_gives_identical_weights() {
    let g = golden();
    let config = TrainConfig {
        max_steps: Some(5),
        batch_size: 2,
        grad_accum: 2,
        lora: Some(LoraConfig {
            dropout: 0.1,
            ..lora_config()
        }),
        learning_rate: 1e-2,
        ..trl_config(&g)
    };
    let make = || golden_trainer(&g, config.clone());
    let mut straight = make();
    straight
        .run(&Schedule::default(), &mut Log::default())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let schedule = Schedule {
        checkpoint_dir: Some(dir.path().to_path_buf()),
        checkpoint_every: Some(2),
        eval_every: None,
    };
    /// Stops after three steps, as a kill would, leaving the step-2 checkpoint.
    struct StopAfter(usize, Log);
    impl flow_model::train::Observer for StopAfter {
        fn record(&mut self, record: &Record) -> flow_model::Result<()> {
            self.1.record(record)
        }
        fn cancelled(&self) -> bool {
            self.1.0.len() >= self.0
        }
    }
    let mut first = make();
    assert!(
        first
            .run(&schedule, &mut StopAfter(3, Log::default()))
            .is_err()
    );
    let mut resumed = make();
    assert_eq!(resumed.resume(dir.path()).unwrap(), Some(2));
    resumed.run(&schedule, &mut Log::default()).unwrap();
    for (a, b) in straight.params().iter().zip(resumed.params()) {
        assert_eq!(a.value, b.value, "{}", a.name);
    }
}

#[test]
fn a_nan_loss_stops_with_the_step_and_batch_ids() {
    let g = golden();
    let mut examples = golden_examples(&g);
    examples[0].reference = Some([f64::NAN, 0.0]);
    let config = TrainConfig {
        max_steps: Some(2),
        ..trl_config(&g)
    };
    let mut trainer = Trainer::new(
        policy(),
        config,
        sigmoid_objective(0.1),
        examples,
        Vec::new(),
        cpu(),
    )
    .unwrap();
    let error = trainer
        .run(&Schedule::default(), &mut Log::default())
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("non-finite loss at step 1") && message.contains("pair-0"),
        "{message}"
    );
}

/// `mistral-tiny/lora/golden.json`: TRL + PEFT's LoRA DPO from `adapter_init/`.
fn lora_golden() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("mistral-tiny/lora/golden.json")).unwrap(),
    )
    .unwrap()
}

/// A trainer of the base with the golden's initial PEFT adapter on `device`, on the host path
/// or through autodiff, with TRL's reference log-probs or scoring them itself.
fn peft_trainer(g: &Value, tape: bool, known_reference: bool, device: &Device) -> Trainer {
    let mut model = Model::load(&fixtures().join("mistral-tiny/base"), device).unwrap();
    let lora = lora::load_peft(
        &mut model,
        &fixtures().join("mistral-tiny/lora/adapter_init"),
    )
    .unwrap();
    let config = TrainConfig {
        lora: Some(lora),
        autodiff: tape,
        ..trl_config(g)
    };
    let mut examples = golden_examples(g);
    if !known_reference {
        examples.iter_mut().for_each(|e| e.reference = None);
    }
    Trainer::new(
        model,
        config,
        sigmoid_objective(0.1),
        examples,
        Vec::new(),
        device.clone(),
    )
    .unwrap()
}

#[test]
fn lora_dpo_from_a_peft_adapter_matches_trl_and_peft() {
    let g = lora_golden();
    for (tape, known_reference) in [(false, false), (false, true), (true, true)] {
        lora_dpo_matches(&g, tape, known_reference, &cpu());
    }
}

/// TRL + PEFT's LoRA DPO gradients, three steps' losses and adapters after them, on `device`.
fn lora_dpo_matches(g: &Value, tape: bool, known_reference: bool, device: &Device) {
    {
        let what = format!("autodiff {tape}, reference given {known_reference}");
        let (record, grads) = peft_trainer(g, tape, known_reference, device)
            .gradients()
            .unwrap();
        assert_relative(
            record.get("loss").unwrap(),
            g["trl_batch_loss_sigmoid"].as_f64().unwrap(),
            1e-5,
            &format!("{what}: loss"),
        );
        assert_relative(
            record.get("grad_norm").unwrap(),
            g["grad"]["global_l2_norm"].as_f64().unwrap(),
            1e-5,
            &format!("{what}: grad norm"),
        );
        for (name, expected) in g["grad"]["first8"].as_object().unwrap() {
            let (_, grad) = grads.iter().find(|(n, _)| n == name).unwrap();
            for (i, (a, e)) in grad[..8].iter().zip(floats(expected)).enumerate() {
                let a = f64::from(*a);
                assert!(
                    (a - e).abs() <= 1e-3 * e.abs().max(1e-3),
                    "{what} {name}[{i}]: {a} vs {e}"
                );
            }
        }
        let mut trainer = peft_trainer(g, tape, known_reference, device);
        let mut log = Log::default();
        trainer.run(&Schedule::default(), &mut log).unwrap();
        for (ours, theirs) in log
            .0
            .iter()
            .zip(g["train_3_steps"]["log"].as_array().unwrap())
        {
            assert_relative(
                ours.get("loss").unwrap(),
                theirs["loss"].as_f64().unwrap(),
                1e-4,
                &format!("{what}: step loss"),
            );
        }
        let trained: Vec<(String, Vec<f64>)> = trainer
            .params()
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.value.iter().map(|&v| f64::from(v)).collect(),
                )
            })
            .collect();
        for (name, expected) in g["train_3_steps"]["params_after_first8"]
            .as_object()
            .unwrap()
        {
            let (_, values) = trained.iter().find(|(n, _)| n == name).unwrap();
            assert_close(
                &values[..8],
                &floats(expected),
                1e-5,
                &format!("{what} {name}"),
            );
        }
    }
}

#[test]
fn trl_steps_gradients_and_lora_match_on_the_test_device() {
    let Some(device) = test_device() else {
        return;
    };
    for family in FAMILIES {
        sigmoid_gradient(family, true, &device);
        three_trl_steps(family, true, &device);
    }
    let g = lora_golden();
    for known_reference in [false, true] {
        lora_dpo_matches(&g, true, known_reference, &device);
    }
}
