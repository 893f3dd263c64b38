//! Config, dataset and IDX validation: every error names the offending field / problem.

use aidos_train::*;

const GOOD: &str = r#"
epochs = 2
batch_size = 64
seed = 7
[model]
name = "mlp"
layers = [784, 256, 128, 10]
activation = "relu"
dropout = 0.0
[optimizer]
name = "adam"
lr = 1e-3
"#;

fn err_of(toml: &str) -> String {
    TrainConfig::from_toml(toml).unwrap_err().to_string()
}

#[test]
fn good_config_parses_with_defaults() {
    let c = TrainConfig::from_toml(GOOD).unwrap();
    assert_eq!(c.model, ModelConfig::reference_mlp());
    assert_eq!(c.optimizer, OptimizerConfig::adam(1e-3));
    assert_eq!(c.schedule, ScheduleConfig::Constant);
    assert_eq!(c.backend, BackendKind::Cpu);
    assert_eq!(c.seed, 7);
    // eps defaults to PyTorch's 1e-8, not burn's 1e-5.
    let OptimizerConfig::Adam { eps, .. } = c.optimizer else { panic!() };
    assert_eq!(eps, 1e-8);
}

#[test]
fn cnn_and_schedules_parse() {
    let c = TrainConfig::from_toml(
        r#"
epochs = 1
batch_size = 32
backend = "auto"
[model]
name = "cnn"
input = [1, 28, 28]
conv = [{ channels = 32, kernel = 3 }, { channels = 64, kernel = 3 }]
pool = 2
dense = [128]
classes = 10
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9
nesterov = true
[schedule]
name = "cosine"
warmup_steps = 10
min_lr = 0.001
"#,
    )
    .unwrap();
    assert_eq!(c.model, ModelConfig::reference_cnn());
    assert_eq!(c.backend, BackendKind::Auto);
    let s = c.schedule;
    assert!((s.lr_at(0.1, 0, 100) - 0.01).abs() < 1e-12);
    assert!((s.lr_at(0.1, 9, 100) - 0.1).abs() < 1e-12);
    assert!((s.lr_at(0.1, 100, 100) - 0.001).abs() < 1e-12);
    let st = ScheduleConfig::Step { step_size: 10, gamma: 0.5 };
    assert_eq!(st.lr_at(1.0, 25, 100), 0.25);
}

#[test]
fn unknown_model_is_named() {
    let e = err_of(&GOOD.replace("name = \"mlp\"", "name = \"resnet9000\""));
    assert!(e.contains(r#"unknown model "resnet9000" (known: mlp, cnn)"#), "{e}");
}

#[test]
fn zero_layer_size_names_index() {
    let e = err_of(&GOOD.replace("[784, 256, 128, 10]", "[784, 0, 128, 10]"));
    assert_eq!(e, "model.layers[1]: layer size must be > 0");
}

#[test]
fn field_errors_name_the_field() {
    assert_eq!(err_of(&GOOD.replace("batch_size = 64", "batch_size = 0")), "batch_size: must be > 0");
    assert_eq!(err_of(&GOOD.replace("epochs = 2", "epochs = 0")), "epochs: must be > 0");
    assert!(err_of(&GOOD.replace("lr = 1e-3", "lr = -1.0")).starts_with("optimizer.lr:"));
    assert!(err_of(&GOOD.replace("dropout = 0.0", "dropout = 1.0")).starts_with("model.dropout:"));
    assert!(err_of(&GOOD.replace("[784, 256, 128, 10]", "[784]")).starts_with("model.layers:"));
    // Unknown keys are rejected and named.
    let e = err_of(&GOOD.replace("seed = 7", "seed = 7\nbatchsize = 3"));
    assert!(e.contains("batchsize"), "{e}");
    let e = err_of(&GOOD.replace("dropout = 0.0", "dropout = 0.0\nlayer = 3"));
    assert!(e.contains("layer"), "{e}");
    let cnn = ModelConfig::Cnn(CnnConfig {
        input: [1, 4, 4],
        conv: vec![ConvLayerConfig { channels: 0, kernel: 3, padding: None }],
        pool: 2,
        dense: vec![],
        classes: 10,
        dropout: 0.0,
    });
    assert_eq!(cnn.validate().unwrap_err().to_string(), "model.conv[0].channels: must be > 0");
    let sched = ScheduleConfig::Step { step_size: 0, gamma: 0.5 };
    assert_eq!(sched.validate(0.1).unwrap_err().to_string(), "schedule.step_size: must be > 0");
}

#[test]
fn label_count_mismatch() {
    let e = Dataset::new(vec![0.0; 12], vec![0, 1], vec![4]).unwrap_err().to_string();
    assert_eq!(e, "dataset: label count mismatch: 2 labels for 3 feature rows");
    let e = Dataset::new(vec![0.0; 10], vec![0, 1], vec![4]).unwrap_err().to_string();
    assert!(e.contains("not a whole number of samples"), "{e}");
    assert!(Dataset::new(vec![0.0; 8], vec![0, 1], vec![4]).is_ok());
}

fn idx_u8(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn idx_roundtrip_and_errors() {
    let ok = idx_u8(&[2, 2, 2], &[0, 255, 1, 2, 3, 4, 5, 6]);
    let a = IdxArray::parse(&ok, "imgs").unwrap();
    assert_eq!(a.dims, vec![2, 2, 2]);
    assert_eq!(a.data[1], 255.0);

    // gzip is detected from content.
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&ok).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(IdxArray::parse(&gz, "imgs.gz").unwrap(), IdxArray { source_name: "imgs.gz".into(), ..a });

    let e = IdxArray::parse(&ok[..ok.len() - 1], "imgs").unwrap_err().to_string();
    assert_eq!(e, "IDX imgs: 7 data bytes for dims [2, 2, 2] (need 8): file is truncated");
    let e = IdxArray::parse(&ok[..10], "imgs").unwrap_err().to_string();
    assert!(e.contains("truncated header"), "{e}");
    let mut bad = ok.clone();
    bad[0] = 7;
    assert!(IdxArray::parse(&bad, "imgs").unwrap_err().to_string().contains("bad magic"));
    let mut bad = ok.clone();
    bad[2] = 0x42;
    assert!(IdxArray::parse(&bad, "imgs").unwrap_err().to_string().contains("unknown element type 0x42"));
    let e = IdxArray::parse(&gz[..gz.len() / 2], "imgs.gz").unwrap_err().to_string();
    assert!(e.contains("corrupt or truncated gzip"), "{e}");

    // images/labels count mismatch is caught when building the dataset.
    let labels = IdxArray::parse(&idx_u8(&[3], &[0, 1, 2]), "labels").unwrap();
    let imgs = IdxArray::parse(&ok, "imgs").unwrap();
    let e = Dataset::from_idx(imgs.clone(), labels, Normalization::Scale255).unwrap_err().to_string();
    assert!(e.contains("label count mismatch: 3 labels for 2 feature rows"), "{e}");
    let labels = IdxArray::parse(&idx_u8(&[2], &[0, 1]), "labels").unwrap();
    let ds = Dataset::from_idx(imgs, labels, Normalization::Scale255).unwrap();
    assert_eq!(ds.shape, vec![1, 2, 2]);
    assert_eq!(ds.features[1], 1.0);
}

#[test]
fn missing_file_names_path() {
    let e = IdxArray::read("/nonexistent/x.idx").unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/x.idx:"), "{e}");
}

#[test]
fn epoch_order_is_a_deterministic_permutation() {
    let a = epoch_order(1000, 42, 3);
    assert_eq!(a, epoch_order(1000, 42, 3));
    assert_ne!(a, epoch_order(1000, 42, 4));
    let mut s = a.clone();
    s.sort();
    assert_eq!(s, (0..1000).collect::<Vec<u32>>());
}

#[test]
fn dataset_does_not_fit_model() {
    let ds = Dataset::new(vec![0.0; 20], vec![0, 1], vec![10]).unwrap();
    let cfg = TrainConfig::new(ModelConfig::reference_mlp(), OptimizerConfig::adam(1e-3), 1, 2);
    let e = train(&cfg, &ds, None, &mut NoHooks).unwrap_err().to_string();
    assert!(e.contains("training set: samples have 10 values"), "{e}");
    let e = load_model(&ModelConfig::reference_mlp(), b"garbage").unwrap_err().to_string();
    assert!(e.starts_with("checkpoint: corrupt model weights"), "{e}");
}

#[test]
fn json_config_roundtrips_and_names_bad_fields() {
    let c = TrainConfig::from_toml(GOOD).unwrap();
    assert_eq!(TrainConfig::from_json(&c.to_json()).unwrap(), c);
    let e = TrainConfig::from_json(r#"{"model":{"name":"mlp","layers":[4,3]},"optimizer":{"name":"adam","lr":0.1},"epochs":1,"batch_size":8,"epoch":3}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `epoch`"), "{e}");
    let e = TrainConfig::from_json(
        r#"{"model":{"name":"mlp","layers":[4,0,3]},"optimizer":{"name":"adam","lr":0.1},"epochs":1,"batch_size":8}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("model.layers[1]"), "{e}");
    let e = TrainConfig::from_json(
        r#"{"model":{"name":"rnn"},"optimizer":{"name":"adam","lr":0.1},"epochs":1,"batch_size":8}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown model") && e.contains("rnn"), "{e}");
}
