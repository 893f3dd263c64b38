//! A user's own training program on aidos: a tiny MLP written directly with burn 0.22, using `aidos_sdk` to read a
//! dataset version, report metrics, checkpoint and resume, and register the trained model — exactly what the
//! built-in trainer (`aidos train-run`) does, in ~250 lines you own.
//!
//! Build it and submit it as a `process` job; the worker gives it the task environment (`AIDOS_JOB_ID`,
//! `AIDOS_ATTEMPT`, `AIDOS_FENCING_TOKEN`, `AIDOS_SCHEDULER`, `AIDOS_BLOB_DIR`, ... see `aidos_sdk`):
//!
//! ```text
//! cargo build --release --example custom_training
//! aidos dataset push mnist data/mnist10k --split train=8000,test=2000      # once
//! aidos job submit --name digits --max-retries 2 -- \
//!     "$PWD/target/release/examples/custom_training" mnist@v1 digits-custom
//! ```
//!
//! Arguments: `DATASET` (`NAME@vN`, default `mnist`: the latest version; it needs `train` and `test` splits) and
//! `MODEL_NAME` (default `custom-mlp`). Optional environment (`aidos job submit --env EPOCHS=3 ...`): `EPOCHS`
//! (default 5), `HIDDEN` (default 128), `LR` (default 0.001), `BATCH` (default 64). On the 10k MNIST subset the
//! defaults reach ~94.8% test accuracy.
//!
//! Data parallel: submitted with `--replicas N`, the N ranks join one ring (`Context::join_ring`, after the
//! scheduler's rendezvous), rank 0 broadcasts its starting point, each rank trains on its part of every global
//! batch of `BATCH` samples and the gradients are summed with `all_reduce_sum`, so the N ranks train the same model
//! one rank would; rank 0 checkpoints and registers it.
//!
//! Retries: every epoch ends with a checkpoint recorded on the run; a retried attempt (after a lost worker, say)
//! resumes from the newest checkpoint of any earlier attempt. If the scheduler refuses a report
//! ([`SdkError::Fenced`]) this attempt is stale and the program exits at once.

use std::collections::BTreeMap;
use std::io::Write;

// The burn derive macros expand to `burn::...` paths: bring the exact burn aidos is built on into scope.
use aidos_sdk::{Collective, Context, NewModel, RingOptions, SdkError};
use aidos_train::burn;
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::module::linear;
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData, activation};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// inputs → hidden (ReLU) → classes.
#[derive(Module, Debug)]
struct TinyMlp {
    w1: Param<Tensor<2>>,
    b1: Param<Tensor<1>>,
    w2: Param<Tensor<2>>,
    b2: Param<Tensor<1>>,
}

/// A small deterministic generator (no extra dependency): xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n).map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound).collect()
    }
}

impl TinyMlp {
    fn init(d_in: usize, hidden: usize, classes: usize, device: &Device) -> TinyMlp {
        let mut r = Rng(0x5eed);
        let (b1, b2) = (1.0 / (d_in as f32).sqrt(), 1.0 / (hidden as f32).sqrt());
        TinyMlp {
            w1: Param::from_data(TensorData::new(r.uniform(d_in * hidden, b1), [d_in, hidden]), device),
            b1: Param::from_data(TensorData::new(r.uniform(hidden, b1), [hidden]), device),
            w2: Param::from_data(TensorData::new(r.uniform(hidden * classes, b2), [hidden, classes]), device),
            b2: Param::from_data(TensorData::new(r.uniform(classes, b2), [classes]), device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = activation::relu(linear(x, self.w1.val(), Some(self.b1.val())));
        linear(h, self.w2.val(), Some(self.b2.val()))
    }
}

fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [b, _] = logits.dims();
    activation::log_softmax(logits, 1).gather(1, targets.reshape([b, 1])).mean().neg()
}

/// Checkpoint format of this program: `epochs_done u64 | step u64 | model_len u64 | model | optimizer`.
fn encode_checkpoint(epochs_done: u64, step: u64, model: &TinyMlp, optim: &ModuleOptimizer) -> Result<Vec<u8>, String> {
    let m = model.clone().into_record().into_bytes().map_err(|e| format!("serialising the model: {e}"))?;
    let o = optim.into_bytes().map_err(|e| format!("serialising the optimizer: {e}"))?;
    let mut out = Vec::with_capacity(24 + m.len() + o.len());
    for v in [epochs_done, step, m.len() as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&m);
    out.extend_from_slice(&o);
    Ok(out)
}

/// Sums every parameter's gradient across the ranks (each rank's loss was already scaled by its share of the
/// global batch, so the sum is the global batch's gradient).
fn all_reduce_grads(
    comm: &mut dyn Collective,
    model: &TinyMlp,
    grads: &mut GradientsParams,
    device: &Device,
) -> Result<(), Box<dyn std::error::Error>> {
    macro_rules! reduce {
        ($p:expr, $d:literal) => {{
            let id = $p.id;
            let shape = $p.val().dims();
            let mut v: Vec<f32> = match grads.remove::<$d>(id) {
                Some(g) => g.into_data().try_into_vec_as::<f32>().map_err(|e| format!("{e:?}"))?,
                None => vec![0.0; shape.iter().product()],
            };
            comm.all_reduce_sum(&mut v)?;
            grads.register(id, Tensor::<$d>::from_data(TensorData::new(v, shape), device));
        }};
    }
    reduce!(model.w1, 2);
    reduce!(model.b1, 1);
    reduce!(model.w2, 2);
    reduce!(model.b2, 1);
    Ok(())
}

fn load_weights(model: TinyMlp, bytes: &[u8]) -> Result<TinyMlp, String> {
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec())).map_err(|e| format!("{e}"))?;
    model.try_load_record(record).map_err(|e| format!("weights do not fit: {e}"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = args.first().map(String::as_str).unwrap_or("mnist");
    let model_name = args.get(1).map(String::as_str).unwrap_or("custom-mlp");
    let (epochs, hidden, lr, batch) =
        (env_or("EPOCHS", 5u64), env_or("HIDDEN", 128usize), env_or("LR", 1e-3), env_or("BATCH", 64usize));

    // 1. Who am I, and what do I train on?
    let ctx = Context::from_env()?;
    let manifest = ctx.dataset(dataset)?;
    let mut train = ctx.load_split(&manifest, "train")?;
    let mut test = ctx.load_split(&manifest, "test")?;
    let (d, k) = (train.row_len(), (manifest.num_classes as usize).max(2));
    println!(
        "{} on {}@v{}: {} train rows, {} test rows, {d} features, {k} classes",
        ctx.run_id(),
        manifest.name,
        manifest.version,
        train.rows,
        test.rows
    );

    // Standardise with the train split's statistics (recorded with the model below).
    let finite = || train.features.iter().filter(|v| v.is_finite()).map(|&v| v as f64);
    let n = finite().count().max(1) as f64;
    let mean = finite().sum::<f64>() / n;
    let std = (finite().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-12);
    for v in train.features.iter_mut().chain(test.features.iter_mut()) {
        *v = if v.is_nan() { 0.0 } else { ((*v as f64 - mean) / std) as f32 };
    }

    let params: BTreeMap<String, String> = [
        ("epochs", epochs.to_string()),
        ("hidden", hidden.to_string()),
        ("lr", lr.to_string()),
        ("batch_size", batch.to_string()),
        ("program", "examples/custom_training.rs".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The ring of a data-parallel gang (a no-op for one rank). The signature names the model's shapes: ranks that
    // would build different models are refused at the rendezvous.
    let mut comm =
        ctx.join_ring(&format!("tiny-mlp:{d}x{hidden},{hidden},{hidden}x{k},{k}"), RingOptions::default())?;
    let (rank, world) = (comm.rank(), comm.world_size());
    if rank == 0 {
        ctx.log_params(&params)?;
        ctx.log_dataset(&manifest)?;
    }

    // 2. Model and optimizer, resumed from the newest checkpoint of an earlier attempt if there is one; rank 0's
    //    starting point is broadcast so that every rank starts identical.
    let device = Device::flex().autodiff();
    let mut model = TinyMlp::init(d, hidden, k, &device);
    let mut optim: ModuleOptimizer = AdamConfig::new().with_epsilon(1e-8).init();
    let (mut first_epoch, mut step) = (0u64, 0u64);
    let mut latest = if rank == 0 { ctx.latest_checkpoint()? } else { None };
    if world > 1 {
        let mut bytes = match (rank, latest.take()) {
            (0, Some((_, b))) => b,
            (0, None) => encode_checkpoint(0, 0, &model, &optim)?,
            _ => Vec::new(),
        };
        comm.broadcast(0, &mut bytes)?;
        latest = Some((Default::default(), bytes));
    }
    if let Some((ck, bytes)) = latest {
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        if bytes.len() < 24 || 24 + word(2) as usize > bytes.len() {
            return Err(format!("checkpoint {} is not one of this program's", ck.blob).into());
        }
        let m_end = 24 + word(2) as usize;
        model = load_weights(model, &bytes[24..m_end])?;
        optim = optim.from_bytes(Bytes::from_bytes_vec(bytes[m_end..].to_vec())).map_err(|e| format!("{e}"))?;
        (first_epoch, step) = (word(0), word(1));
        if step > 0 {
            println!("resuming after epoch {first_epoch} (step {step})");
            if rank == 0 {
                ctx.log_resumed_from(step)?;
            }
        }
    }

    // 3. Train: metrics every 50 steps and at epoch ends, a checkpoint per epoch.
    let rows = train.rows as usize;
    let mut order: Vec<usize> = (0..rows).collect();
    let mut last_loss = f64::NAN;
    for epoch in first_epoch..epochs {
        let mut rng = Rng(0x9e37_79b9 ^ (epoch + 1));
        for i in (1..rows).rev() {
            order.swap(i, rng.next() as usize % (i + 1));
        }
        let (mut sum, mut count) = (0.0, 0usize);
        for global in order.chunks(batch) {
            // This rank's contiguous part of the global batch; its loss counts for its share of the batch.
            let idx = &global[rank * global.len() / world..(rank + 1) * global.len() / world];
            let b = idx.len();
            let (mut grads, mut l) = (GradientsParams::new(), 0.0f32);
            if b > 0 {
                let x: Vec<f32> = idx.iter().flat_map(|&i| train.row(i).to_vec()).collect();
                let y: Vec<i64> = idx.iter().map(|&i| train.labels[i] as i64).collect();
                let x = Tensor::<2>::from_data(TensorData::new(x, [b, d]), &device);
                let y = Tensor::<1, Int>::from_data(TensorData::new(y, [b]), &device);
                let loss = cross_entropy(model.forward(x), y).mul_scalar(b as f32 / global.len() as f32);
                grads = GradientsParams::from_grads(loss.backward(), &model);
                l = loss.into_scalar::<f32>();
            }
            if world > 1 {
                all_reduce_grads(comm.as_mut(), &model, &mut grads, &Device::flex())?;
                let mut total = [l];
                comm.all_reduce_sum(&mut total)?;
                l = total[0];
            }
            model = optim.step(lr, model, grads);
            step += 1;
            let l = l as f64;
            (sum, count) = (sum + l, count + 1);
            if rank == 0 && step.is_multiple_of(50) {
                ctx.log_metrics(step, epoch as u32, &[("train_loss", l)])?;
            }
        }
        last_loss = sum / count.max(1) as f64;
        if rank != 0 {
            continue;
        }
        let acc = accuracy(&model, &test.features, &test.labels, d, k);
        ctx.log_metrics(step, epoch as u32, &[("epoch_train_loss", last_loss), ("val_accuracy", acc)])?;
        ctx.save_checkpoint(step, epoch as u32 + 1, &encode_checkpoint(epoch + 1, step, &model, &optim)?)?;
        println!("epoch {}/{epochs} step {step} loss {last_loss:.4} val_accuracy {acc:.4}", epoch + 1);
        std::io::stdout().flush()?;
    }

    // Every rank holds the same model: rank 0 registers it.
    comm.barrier()?;
    if rank != 0 {
        println!("rank {rank} of {world} done at step {step}");
        return Ok(());
    }

    // 4. Register the model: weights, the config needed to rebuild it and its preprocessing, metrics, lineage.
    let acc = accuracy(&model, &test.features, &test.labels, d, k);
    let weights = model.clone().into_record().into_bytes().map_err(|e| format!("{e}"))?.to_vec();
    let config = serde_json::json!({
        "model": {"name": "custom-tiny-mlp", "layers": [d, hidden, k]},
        "normalization": {"mean": mean, "std": std},
        "input_shape": manifest.row_shape,
        "classes": k,
    });
    let mut new = NewModel::new(model_name, config.to_string()).with_dataset(&manifest).metric("test_accuracy", acc);
    if last_loss.is_finite() {
        new = new.metric("train_loss", last_loss);
    }
    new.params = params;
    match ctx.register_model(&new, &weights) {
        Ok(mv) => println!("registered model {}:{} test_accuracy={acc:.4}", mv.name, mv.version),
        Err(SdkError::Fenced(why)) => {
            return Err(format!("a newer attempt owns this job; not registering ({why})").into());
        }
        Err(e) => return Err(e.into()),
    }
    ctx.flush()?;
    Ok(())
}

/// Accuracy of `model` on row-major `features` (`d` per row), without autodiff.
fn accuracy(model: &TinyMlp, features: &[f32], labels: &[u32], d: usize, k: usize) -> f64 {
    let m = model.valid();
    let device = Device::flex();
    let mut correct = 0usize;
    for (xs, ys) in features.chunks(1000 * d).zip(labels.chunks(1000)) {
        let x = Tensor::<2>::from_data(TensorData::new(xs.to_vec(), [ys.len(), d]), &device);
        let logits: Vec<f32> = m.forward(x).into_data().try_into_vec_as::<f32>().unwrap_or_default();
        for (row, &y) in logits.chunks(k).zip(ys) {
            let best = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
            correct += (best == y as usize) as usize;
        }
    }
    correct as f64 / labels.len().max(1) as f64
}
