//! Training-loop behaviour on small synthetic data (fast, no data files needed).

use aidos_train::*;

/// 4 well-separated classes in `dim` dims: class c has mean +3 on coordinates c, c+4, ...
fn synthetic(n: usize, dim: usize, seed: u64) -> Dataset {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let mut f = Vec::with_capacity(n * dim);
    let mut l = Vec::with_capacity(n);
    for i in 0..n {
        let c = (i % 4) as u32;
        for j in 0..dim {
            let mean = if j % 4 == c as usize { 1.5 } else { 0.0 };
            f.push(mean + next());
        }
        l.push(c);
    }
    Dataset::new(f, l, vec![dim]).unwrap()
}

fn mlp_cfg(dropout: f64) -> TrainConfig {
    let mut c = TrainConfig::new(
        ModelConfig::Mlp(MlpConfig { layers: vec![16, 32, 4], activation: Activation::Relu, dropout }),
        OptimizerConfig::adam(1e-2),
        3,
        16,
    );
    c.seed = 11;
    c.log_every_steps = 1;
    c
}

#[derive(Default)]
struct Recorder {
    losses: Vec<(u64, f64)>,
    checkpoints: Vec<Checkpoint>,
    resume_from: Option<Checkpoint>,
    stop_after_step: Option<u64>,
    last_step: u64,
    resume_asked: u32,
}

impl TrainHooks for Recorder {
    fn on_metrics(&mut self, step: u64, _epoch: u32, metrics: &[(&str, f64)]) {
        self.last_step = step;
        for (k, v) in metrics {
            if *k == "train_loss" {
                self.losses.push((step, *v));
            }
        }
    }
    fn on_checkpoint(&mut self, ck: &Checkpoint) -> Result<()> {
        self.checkpoints.push(ck.clone());
        Ok(())
    }
    fn resume(&mut self) -> Option<Checkpoint> {
        self.resume_asked += 1;
        self.resume_from.take()
    }
    fn should_stop(&mut self) -> bool {
        self.stop_after_step.is_some_and(|s| self.last_step >= s)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tiny_mlp_loss_decreases() {
    let ds = synthetic(256, 16, 1);
    let val = synthetic(128, 16, 2);
    let mut rec = Recorder::default();
    let out = train(&mlp_cfg(0.0), &ds, Some(&val), &mut rec).unwrap();
    assert_eq!(out.global_step, 3 * 16);
    let first: f64 = rec.losses[..4].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let last: f64 = rec.losses[rec.losses.len() - 4..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    assert!(last < 0.5 * first, "loss did not decrease: {first} -> {last}");
    let v = out.final_val().unwrap();
    assert!(v.accuracy > 0.9, "val accuracy {}", v.accuracy);
    assert_eq!(rec.checkpoints.len(), 3); // one per epoch
    assert_eq!(rec.resume_asked, 1);
    // Eval report is self-consistent.
    assert_eq!(v.confusion.len(), 4);
    assert_eq!(v.per_class.iter().map(|c| c.support).sum::<u64>(), 128);
}

#[test]
fn same_seed_same_result() {
    let ds = synthetic(128, 16, 3);
    let a = train(&mlp_cfg(0.3), &ds, None, &mut NoHooks).unwrap();
    let b = train(&mlp_cfg(0.3), &ds, None, &mut NoHooks).unwrap();
    let (ma, mb) = (a.model().unwrap(), b.model().unwrap());
    let pa = ma.predict(&ds.features, ds.len()).unwrap();
    let pb = mb.predict(&ds.features, ds.len()).unwrap();
    assert_eq!(pa, pb);
}

/// The critical property: stop at step K (after a checkpoint), resume in a fresh trainer,
/// finish; the result equals the uninterrupted run. Uses dropout, so RNG position matters.
fn check_resume(cfg: TrainConfig, ds: &Dataset, val: &Dataset, stop_at: u64) {
    let mut full = Recorder::default();
    let a = train(&cfg, ds, Some(val), &mut full).unwrap();

    // Interrupted run: `should_stop` fires before step stop_at+1; a checkpoint is emitted.
    let mut first = Recorder { stop_after_step: Some(stop_at), ..Default::default() };
    let partial = train(&cfg, ds, Some(val), &mut first).unwrap();
    assert!(partial.stopped_early);
    assert_eq!(partial.global_step, stop_at);
    let ck = first.checkpoints.last().unwrap().clone();
    let meta = ck.meta().unwrap();
    assert_eq!(meta.global_step, stop_at);

    // Fresh trainer resumes from it.
    let mut second = Recorder { resume_from: Some(ck), ..Default::default() };
    let b = train(&cfg, ds, Some(val), &mut second).unwrap();
    assert_eq!(b.resumed_from_step, Some(stop_at));
    assert_eq!(b.global_step, a.global_step);
    assert!(!b.stopped_early);
    // It starts at the checkpointed step: first reported loss is for step stop_at+1.
    assert_eq!(second.losses.first().unwrap().0, stop_at + 1);
    // Per-step losses after the resume point match the uninterrupted run.
    for (step, loss) in &second.losses {
        let (_, want) = full.losses.iter().find(|(s, _)| s == step).unwrap();
        assert!((loss - want).abs() < 1e-5, "step {step}: {loss} vs {want}");
    }
    let (ma, mb) = (a.model().unwrap(), b.model().unwrap());
    let diff =
        max_abs_diff(&ma.predict(&val.features, val.len()).unwrap(), &mb.predict(&val.features, val.len()).unwrap());
    assert!(diff < 1e-5, "final logits differ by {diff}");
    let (va, vb) = (a.final_val().unwrap(), b.final_val().unwrap());
    assert_eq!(va.confusion, vb.confusion);
    assert!((va.loss - vb.loss).abs() < 1e-6);

    // Resuming from a periodic checkpoint of the full run also reproduces it.
    if let Some(mid) = full.checkpoints.iter().find(|c| c.meta().unwrap().step_in_epoch > 0) {
        let step = mid.meta().unwrap().global_step;
        let mut third = Recorder { resume_from: Some(mid.clone()), ..Default::default() };
        let c = train(&cfg, ds, Some(val), &mut third).unwrap();
        assert_eq!(c.resumed_from_step, Some(step));
        let diff = max_abs_diff(
            &ma.predict(&val.features, val.len()).unwrap(),
            &c.model().unwrap().predict(&val.features, val.len()).unwrap(),
        );
        assert!(diff < 1e-5, "resume from periodic checkpoint at {step}: logits differ by {diff}");
    }
}

#[test]
fn checkpoint_resume_equals_uninterrupted_mlp() {
    let mut cfg = mlp_cfg(0.2);
    cfg.checkpoint_every_steps = 5;
    cfg.schedule = ScheduleConfig::Cosine { warmup_steps: 4, min_lr: 1e-4 };
    // 200 samples / 16 = 13 steps per epoch (last one partial); stop mid-epoch 2.
    check_resume(cfg, &synthetic(200, 16, 5), &synthetic(64, 16, 6), 18);
}

#[test]
fn checkpoint_resume_equals_uninterrupted_cnn_sgd() {
    let model = ModelConfig::Cnn(CnnConfig {
        input: [1, 4, 4],
        conv: vec![ConvLayerConfig { channels: 4, kernel: 3, padding: None }],
        pool: 2,
        dense: vec![8],
        classes: 4,
        dropout: 0.25,
    });
    let opt = OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
    let mut cfg = TrainConfig::new(model, opt, 2, 16);
    cfg.seed = 3;
    cfg.log_every_steps = 1;
    cfg.checkpoint_every_steps = 4;
    check_resume(cfg, &synthetic(96, 16, 7), &synthetic(32, 16, 8), 5);
}

#[test]
fn resume_rejects_other_config_and_corrupt_bytes() {
    let ds = synthetic(64, 16, 9);
    let mut rec = Recorder::default();
    train(&mlp_cfg(0.0), &ds, None, &mut rec).unwrap();
    let ck = rec.checkpoints[0].clone();
    let mut other = mlp_cfg(0.0);
    other.batch_size = 8;
    let mut h = Recorder { resume_from: Some(ck.clone()), ..Default::default() };
    let e = train(&other, &ds, None, &mut h).unwrap_err().to_string();
    assert!(e.contains("different `batch_size`"), "{e}");
    let mut bytes = ck.bytes.clone();
    bytes.truncate(bytes.len() - 3);
    let mut h = Recorder { resume_from: Some(Checkpoint { bytes }), ..Default::default() };
    let e = train(&mlp_cfg(0.0), &ds, None, &mut h).unwrap_err().to_string();
    assert!(e.contains("truncated optimizer"), "{e}");
}

#[test]
fn save_load_predict_roundtrip() {
    let ds = synthetic(64, 16, 10);
    let out = train(&mlp_cfg(0.0), &ds, Some(&ds), &mut NoHooks).unwrap();
    let m = load_model(&out.config.model, &out.weights).unwrap();
    let logits = m.predict(ds.row(0), 1).unwrap();
    assert_eq!(logits.len(), 4);
    let rep = evaluate(&m, &ds).unwrap();
    let v = out.final_val().unwrap();
    assert_eq!(rep.confusion, v.confusion);
    assert!((rep.loss - v.loss).abs() < 1e-6);
    // Weights re-serialise and load again.
    let again = load_model(&out.config.model, &m.weights().unwrap()).unwrap();
    assert_eq!(again.predict(ds.row(0), 1).unwrap(), logits);
    // Wrong architecture is rejected.
    let e = load_model(&ModelConfig::reference_mlp(), &out.weights).unwrap_err().to_string();
    assert!(e.contains("weights do not fit"), "{e}");
    let e = m.predict(&[0.0; 3], 1).unwrap_err().to_string();
    assert!(e.contains("3 values for 1 rows of 16 features"), "{e}");
}
