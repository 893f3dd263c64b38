//! The batching actor against a runtime whose behaviour the test controls (it records every batch it runs and
//! can be held): each caller gets its own rows back, concurrent requests share batches up to max_batch_size,
//! a full queue refuses at once, and requests whose caller left are never computed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aidos_runtime::{DataType, Instance, ModelMetadata, ModelRuntime, Tensor, TensorSpec};
use aidos_serve::batcher::Batcher;
use aidos_serve::{BatchConfig, Metrics, ServeError};

/// y = 2x per value; records batch sizes; sleeps `hold` per batch.
struct Doubler {
    meta: ModelMetadata,
    batches: Arc<Mutex<Vec<usize>>>,
    rows_run: Arc<AtomicUsize>,
    hold: Duration,
}

impl Doubler {
    fn new(hold: Duration) -> Arc<Doubler> {
        let spec = |n: &str| TensorSpec { name: n.into(), datatype: DataType::Fp32, shape: vec![-1, 2] };
        Arc::new(Doubler {
            meta: ModelMetadata { platform: "test".into(), inputs: vec![spec("x")], outputs: vec![spec("y")] },
            batches: Arc::default(),
            rows_run: Arc::default(),
            hold,
        })
    }
}

struct DoublerInstance(Arc<Mutex<Vec<usize>>>, Arc<AtomicUsize>, Duration);

impl Instance for DoublerInstance {
    fn run(&mut self, inputs: &[Tensor]) -> aidos_runtime::Result<Vec<Tensor>> {
        std::thread::sleep(self.2);
        let rows = inputs[0].rows();
        self.0.lock().unwrap().push(rows);
        self.1.fetch_add(rows, Ordering::SeqCst);
        Ok(vec![Tensor { shape: inputs[0].shape.clone(), data: inputs[0].data.iter().map(|v| v * 2.0).collect() }])
    }
}

impl ModelRuntime for Doubler {
    fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }
    fn instance(&self) -> aidos_runtime::Result<Box<dyn Instance>> {
        Ok(Box::new(DoublerInstance(self.batches.clone(), self.rows_run.clone(), self.hold)))
    }
}

fn cfg(max_batch: usize, queue: usize) -> BatchConfig {
    BatchConfig {
        max_batch_size: max_batch,
        max_queue_delay: Duration::from_millis(5),
        max_queue_size: queue,
        ..BatchConfig::default()
    }
}

fn row(i: usize) -> Vec<Tensor> {
    vec![Tensor { shape: vec![1, 2], data: vec![i as f32, -(i as f32)] }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_get_their_own_rows() {
    let rt = Doubler::new(Duration::from_millis(2));
    let m = Metrics::default();
    let b = Arc::new(Batcher::start("d", rt.clone(), cfg(8, 1000), m.model("d", "1")).unwrap());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { (i, b.infer(row(i)).await.unwrap()) })
        })
        .collect();
    for t in tasks {
        let (i, out) = t.await.unwrap();
        assert_eq!(out[0].data, vec![2.0 * i as f32, -2.0 * i as f32], "request {i} got someone else's rows");
    }
    let batches = rt.batches.lock().unwrap().clone();
    assert_eq!(batches.iter().sum::<usize>(), 100);
    assert!(batches.iter().all(|b| *b <= 8), "{batches:?}");
    assert!(batches.len() < 100, "no batching happened: {batches:?}");
    assert!(m.encode().contains("aidos_inference_batch_size_count{model=\"d\",version=\"1\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_oversized_requests_are_refused() {
    let rt = Doubler::new(Duration::from_millis(300));
    let b = Arc::new(Batcher::start("d", rt.clone(), cfg(1, 2), Metrics::default().model("d", "1")).unwrap());
    // One request computing (held 300 ms), two waiting: the fourth finds the queue full.
    let mut held = Vec::new();
    for i in 0..3 {
        let b = b.clone();
        held.push(tokio::spawn(async move { b.infer(row(i)).await }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    match b.infer(row(9)).await {
        Err(ServeError::QueueFull { capacity: 2, .. }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    for h in held {
        h.await.unwrap().unwrap();
    }
    let two = vec![Tensor { shape: vec![2, 2], data: vec![0.0; 4] }];
    assert!(matches!(b.infer(two).await, Err(ServeError::InvalidInput(m)) if m.contains("exceeds max_batch_size 1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_caller_left_are_not_computed() {
    let rt = Doubler::new(Duration::from_millis(200));
    let b = Arc::new(Batcher::start("d", rt.clone(), cfg(1, 100), Metrics::default().model("d", "1")).unwrap());
    // The first request occupies the only executor; ten more queue behind it and are abandoned.
    let first = {
        let b = b.clone();
        tokio::spawn(async move { b.infer(row(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..10 {
        let b = b.clone();
        let t = tokio::spawn(async move { b.infer(row(100 + i)).await });
        tokio::time::sleep(Duration::from_millis(2)).await;
        t.abort();
    }
    first.await.unwrap().unwrap();
    b.infer(row(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        rt.rows_run.load(Ordering::SeqCst),
        2,
        "abandoned requests were computed: {:?}",
        rt.batches.lock().unwrap()
    );
    assert_eq!(b.queue_depth(), 0);
}
