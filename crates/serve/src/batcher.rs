//! Dynamic batching as an actor.
//!
//! One thread (the *queue owner*) owns the waiting requests; callers hold only a channel sender and a oneshot
//! receiver for their answer. N executor threads each own one runtime [`Instance`] and run one batch at a time.
//! The queue owner is a thread, not an async task, because `max_queue_delay` is typically a few hundred
//! microseconds and tokio's timer rounds to milliseconds; a blocking `recv_timeout` keeps the delay exact.
//!
//! How a batch forms:
//! 1. The queue owner waits for a request, then for a free executor (an idle token, one per executor).
//!    While it waits, requests pile up in the channel, so under load batches fill at once.
//! 2. It takes everything already waiting, then keeps collecting until the batch holds `max_batch_size` rows,
//!    or it holds a preferred batch size and nothing else is waiting, or `max_queue_delay` has passed since the
//!    oldest request of the batch arrived.
//! 3. Requests whose caller went away (dropped future, closed connection: the oneshot receiver is gone) or whose
//!    deadline passed are removed before compute and cost nothing.
//! 4. The batch (FIFO; a request that would overflow it waits for the next) goes to a free executor, which
//!    concatenates the inputs row-wise, runs the model and hands each request its own rows of every output.
//!
//! Invariants: the queue depth counter counts requests accepted and not yet dispatched or dropped; it is
//! checked before a request is accepted, so the queue never exceeds `max_queue_size` (the excess is refused at
//! once). A single request never has more rows than `max_batch_size`. Executors are plain threads: model
//! compute never blocks the async runtime.
//!
//! Cancel safety: [`Batcher::infer`] may be dropped at any await; the request is then skipped (step 3), or its
//! answer is discarded if compute already started.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::time::Instant;

use aidos_runtime::{Instance, ModelMetadata, ModelRuntime, Tensor};
use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::config::BatchConfig;
use crate::error::ServeError;
use crate::metrics::ModelMetrics;

type Reply = oneshot::Sender<Result<Vec<Tensor>, ServeError>>;

struct Request {
    inputs: Vec<Tensor>,
    rows: usize,
    arrived: Instant,
    deadline: Instant,
    reply: Reply,
}

struct Job {
    batch: Vec<Request>,
}

/// The batching front of one model version.
pub struct Batcher {
    model: String,
    tx: std_mpsc::Sender<Request>,
    depth: Arc<AtomicUsize>,
    cfg: BatchConfig,
    meta: ModelMetadata,
    metrics: ModelMetrics,
}

impl Batcher {
    /// Starts the queue-owner thread and `cfg.instances` executor threads.
    pub fn start(
        model: &str,
        runtime: Arc<dyn ModelRuntime>,
        cfg: BatchConfig,
        metrics: ModelMetrics,
    ) -> Result<Batcher, ServeError> {
        cfg.validate().map_err(ServeError::InvalidInput)?;
        let meta = runtime.metadata().clone();
        let (work_tx, work_rx) = std_mpsc::sync_channel::<Job>(cfg.instances);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let (idle_tx, idle_rx) = std_mpsc::channel::<()>();
        let spawn_err =
            |e: std::io::Error| ServeError::Unavailable(model.into(), format!("cannot start a thread: {e}"));
        for i in 0..cfg.instances {
            let instance = runtime.instance()?;
            let (rx, idle, m) = (work_rx.clone(), idle_tx.clone(), metrics.clone());
            let _ = idle_tx.send(());
            std::thread::Builder::new()
                .name(format!("infer-{model}-{i}"))
                .spawn(move || executor(instance, rx, idle, m))
                .map_err(spawn_err)?;
        }
        let (tx, rx) = std_mpsc::channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let (d, c, m) = (depth.clone(), cfg.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("queue-{model}"))
            .spawn(move || queue_owner(rx, work_tx, idle_rx, idle_tx, d, c, m))
            .map_err(spawn_err)?;
        Ok(Batcher { model: model.into(), tx, depth, cfg, meta, metrics })
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Runs one request (inputs already validated against the signature, `rows` rows each) through the batcher.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ServeError> {
        let arrived = Instant::now();
        let rows = inputs.first().map(Tensor::rows).unwrap_or(0);
        if rows == 0 {
            return Err(ServeError::InvalidInput("inputs have no rows (batch dimension is 0)".into()));
        }
        if rows > self.cfg.max_batch_size {
            return Err(ServeError::InvalidInput(format!(
                "batch of {rows} rows exceeds max_batch_size {} of model `{}`",
                self.cfg.max_batch_size, self.model
            )));
        }
        let queued = self.depth.fetch_add(1, Ordering::AcqRel);
        if queued >= self.cfg.max_queue_size {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected.inc();
            return Err(ServeError::QueueFull { model: self.model.clone(), queued, capacity: self.cfg.max_queue_size });
        }
        self.metrics.depth.set((queued + 1) as i64);
        let timeout = self.cfg.request_timeout;
        let (reply, answer) = oneshot::channel();
        let req = Request { inputs, rows, arrived, deadline: arrived + timeout, reply };
        if self.tx.send(req).is_err() {
            self.depth.fetch_sub(1, Ordering::AcqRel);
            return Err(ServeError::Unavailable(self.model.clone(), "the model is unloading".into()));
        }
        let out = match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ServeError::Unavailable(self.model.clone(), "its executor stopped".into())),
            Err(_) => Err(ServeError::Timeout { ms: timeout.as_millis() as u64, stage: "queued or computing" }),
        };
        let took = arrived.elapsed();
        self.metrics.total.observe(took.as_secs_f64());
        self.metrics.busy_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        match &out {
            Ok(_) => self.metrics.success.inc(),
            Err(_) => self.metrics.failure.inc(),
        };
        out
    }
}

impl Backend for Batcher {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    fn max_batch_size(&self) -> usize {
        self.cfg.max_batch_size
    }

    fn infer(&self, inputs: Vec<Tensor>) -> futures::future::BoxFuture<'_, Result<Vec<Tensor>, ServeError>> {
        Box::pin(Batcher::infer(self, inputs))
    }
}

/// Drops requests that can no longer be answered usefully; returns how many were removed.
fn prune(pending: &mut VecDeque<Request>, now: Instant) -> usize {
    let before = pending.len();
    pending.retain_mut(|r| {
        if r.reply.is_closed() {
            return false;
        }
        if r.deadline <= now {
            return false; // its caller's own timeout answers it
        }
        true
    });
    before - pending.len()
}

fn queue_owner(
    rx: std_mpsc::Receiver<Request>,
    work: std_mpsc::SyncSender<Job>,
    idle: std_mpsc::Receiver<()>,
    idle_back: std_mpsc::Sender<()>,
    depth: Arc<AtomicUsize>,
    cfg: BatchConfig,
    metrics: ModelMetrics,
) {
    use std_mpsc::RecvTimeoutError;
    let mut pending: VecDeque<Request> = VecDeque::new();
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(r) => pending.push_back(r),
                Err(_) => return,
            }
        }
        // A free executor; requests keep arriving in the channel meanwhile.
        if idle.recv().is_err() {
            return; // every executor is gone
        }
        while let Ok(r) = rx.try_recv() {
            pending.push_back(r);
        }
        let mut dropped = prune(&mut pending, Instant::now());
        if let Some(first) = pending.front() {
            let flush_at = first.arrived + cfg.max_queue_delay;
            loop {
                let rows: usize = pending.iter().map(|r| r.rows).sum();
                if rows >= cfg.max_batch_size || !open {
                    break;
                }
                if cfg.preferred_batch_sizes.contains(&rows) {
                    match rx.try_recv() {
                        Ok(r) => {
                            pending.push_back(r);
                            continue;
                        }
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                if now >= flush_at {
                    break;
                }
                match rx.recv_timeout(flush_at - now) {
                    Ok(r) => pending.push_back(r),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            dropped += prune(&mut pending, Instant::now());
        }
        let mut batch = Vec::new();
        let mut rows = 0;
        while let Some(r) = pending.front() {
            if rows + r.rows > cfg.max_batch_size {
                break;
            }
            let r = pending.pop_front().expect("front exists");
            rows += r.rows;
            batch.push(r);
        }
        let left = depth.fetch_sub(batch.len() + dropped, Ordering::AcqRel) - batch.len() - dropped;
        metrics.depth.set(left as i64);
        if batch.is_empty() {
            let _ = idle_back.send(()); // the executor stays free
            continue;
        }
        let now = Instant::now();
        for r in &batch {
            metrics.queue.observe((now - r.arrived).as_secs_f64());
        }
        if work.send(Job { batch }).is_err() {
            return; // every executor died; callers see their oneshot dropped
        }
    }
}

fn executor(
    mut instance: Box<dyn Instance>,
    rx: Arc<Mutex<std_mpsc::Receiver<Job>>>,
    idle: std_mpsc::Sender<()>,
    metrics: ModelMetrics,
) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        // Callers may have left while the batch waited for this thread.
        let mut batch: Vec<Request> = job.batch.into_iter().filter(|r| !r.reply.is_closed()).collect();
        if batch.is_empty() {
            let _ = idle.send(());
            continue;
        }
        let rows: usize = batch.iter().map(|r| r.rows).sum();
        let started = Instant::now();
        let result =
            if batch.len() == 1 { instance.run(&batch[0].inputs) } else { instance.run(&concat(&batch, rows)) };
        metrics.compute.observe(started.elapsed().as_secs_f64());
        metrics.batch.observe(rows as f64);
        match result {
            Ok(outputs) => split(batch, outputs, rows),
            Err(e) => {
                let msg = e.to_string();
                for r in batch.drain(..) {
                    let _ = r.reply.send(Err(ServeError::Runtime(aidos_runtime::RuntimeError::Run(msg.clone()))));
                }
            }
        }
        let _ = idle.send(());
    }
}

/// Row-wise concatenation of every request's inputs (input by input).
fn concat(batch: &[Request], rows: usize) -> Vec<Tensor> {
    let n_inputs = batch[0].inputs.len();
    (0..n_inputs)
        .map(|i| {
            let mut shape = batch[0].inputs[i].shape.clone();
            shape[0] = rows;
            let mut data = Vec::with_capacity(shape.iter().product());
            for r in batch {
                data.extend_from_slice(&r.inputs[i].data);
            }
            Tensor { shape, data }
        })
        .collect()
}

/// Hands each request its rows of every output, in order.
fn split(batch: Vec<Request>, outputs: Vec<Tensor>, rows: usize) {
    if batch.len() == 1 {
        let r = batch.into_iter().next().expect("one request");
        let _ = r.reply.send(Ok(outputs));
        return;
    }
    let per_row: Vec<usize> = outputs.iter().map(|o| o.data.len().checked_div(rows).unwrap_or(0)).collect();
    let mut offset = 0;
    for r in batch {
        let mine = outputs
            .iter()
            .zip(&per_row)
            .map(|(o, w)| {
                let mut shape = o.shape.clone();
                shape[0] = r.rows;
                Tensor { shape, data: o.data[offset * w..(offset + r.rows) * w].to_vec() }
            })
            .collect();
        offset += r.rows;
        let _ = r.reply.send(Ok(mine));
    }
}
