//! Seed inputs per target: valid inputs of each format (so mutations start inside the grammar) and a few
//! near-misses. Built in code, not kept as files, so they follow the formats as they change.

use aidos_api::v1::{BlobUploadChunk, LogChunk, ParamKind, ParamSpec};
use prost::Message;

use crate::join2;

/// The ONNX graph writer of the runtime's tests (one writer for tests, benches and these seeds).
#[path = "../../runtime/tests/support/graph.rs"]
mod graph;

const MLP: &str = include_str!("../../../examples/mnist-mlp.toml");
const CNN: &str = include_str!("../../../examples/mnist-cnn.toml");
const SWEEP: &str = include_str!("../../../examples/mnist-sweep.toml");

const PROCESS: &str = r#"
name = "p"
replicas = 2
min_replicas = 1
max_retries = 1
labels = { team = "a" }
constraints = ["gpu=true"]
[resources]
cpu = "500m"
memory = "64Mi"
[process]
executable = "sh"
args = ["-c", "echo ${x}"]
env = { A = "1" }
"#;

const PROCESS_SWEEP: &str = r#"
name = "q"
[sweep]
metric = "objective"
direction = "minimize"
searcher = "grid"
max_trials = 8
max_concurrent = 2
[sweep.pruner]
kind = "hyperband"
min_resource = 1
reduction_factor = 2
max_resource = 8
[sweep.params]
x = { uniform = [0.0, 1.0], grid_points = 3 }
n = { int = [1, 9], step = 2 }
opt = { choices = ["sgd", "adam"] }
lr = { loguniform = [1e-4, 1e-1], when = "opt=adam" }
[trial]
[trial.process]
executable = "sh"
args = ["-c", "echo ${x} ${n}"]
env = { OPT = "${opt}" }
"#;

pub fn job_specs() -> Vec<Vec<u8>> {
    [MLP, CNN, PROCESS, "[process]\nexecutable = \"true\"\n", "kind = \"quantum\"\n", "replicas = 0\n[process]\n"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
}

pub fn sweep_specs() -> Vec<Vec<u8>> {
    [SWEEP, PROCESS_SWEEP, "[sweep]\nmetric = \"m\"\n"].iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// A parameter's first value: its first choice, else its lower bound (an integer for INT).
pub fn first_value(p: &ParamSpec) -> serde_json::Value {
    match p.kind() {
        ParamKind::Categorical => {
            p.choices.first().and_then(|c| serde_json::from_str(c).ok()).unwrap_or(serde_json::Value::Null)
        }
        ParamKind::Int => serde_json::json!(p.low as i64),
        _ => serde_json::json!(p.low),
    }
}

fn infer_header(binary: bool) -> String {
    let data =
        if binary { r#""parameters": {"binary_data_size": 32}"# } else { r#""data": [[1, 2, 3, 4], [5, 6, 7, 8]]"# };
    format!(
        r#"{{"id": "r1", "inputs": [{{"name": "x", "shape": [2, 4], "datatype": "FP32", {data}}}],
            "outputs": [{{"name": "y", "parameters": {{"binary_data": {binary}}}}}]}}"#
    )
}

pub fn infer_json() -> Vec<Vec<u8>> {
    vec![
        infer_header(false).into_bytes(),
        br#"{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.5, -2, 3e3, 0]}]}"#.to_vec(),
        br#"{"inputs": [{"name": "x", "shape": [-1, 4], "datatype": "INT8", "data": [1]}], "outputs": []}"#.to_vec(),
        br#"{"inputs": []}"#.to_vec(),
    ]
}

pub fn infer_binary() -> Vec<Vec<u8>> {
    let header = infer_header(true);
    let mut v = (header.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    for f in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] {
        v.extend_from_slice(&f.to_le_bytes());
    }
    vec![v]
}

pub fn infer_grpc() -> Vec<Vec<u8>> {
    use aidos_serve::grpc::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    use aidos_serve::grpc::pb::{InferTensorContents, ModelInferRequest};
    let raw: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let input = |contents| InferInputTensor {
        name: "x".into(),
        datatype: "FP32".into(),
        shape: vec![2, 4],
        contents,
        ..Default::default()
    };
    let raw_req = ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![input(None)],
        raw_input_contents: vec![raw.into()],
        outputs: vec![InferRequestedOutputTensor { name: "y".into(), ..Default::default() }],
        ..Default::default()
    };
    let typed = ModelInferRequest {
        model_name: "m".into(),
        model_version: "1".into(),
        inputs: vec![input(Some(InferTensorContents { fp32_contents: vec![0.5; 8], ..Default::default() }))],
        ..Default::default()
    };
    vec![raw_req.encode_to_vec(), typed.encode_to_vec()]
}

fn idx_file(dims: &[u32], fill: u8) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend(std::iter::repeat_n(fill, dims.iter().product::<u32>() as usize));
    v
}

pub fn idx() -> Vec<Vec<u8>> {
    vec![join2(&idx_file(&[3, 2, 2], 7), &idx_file(&[3], 1)), join2(&idx_file(&[1, 28, 28], 0), &idx_file(&[1], 9))]
}

pub fn csv() -> Vec<Vec<u8>> {
    vec![
        b"a,b,label\n1,2,0\n3.5,NaN,1\n,4,2\n".to_vec(),
        b"x;y\n1;2\n".to_vec(),
        b"\"q,uoted\",l\n\"1\",\"2\"\n".to_vec(),
    ]
}

pub fn npy() -> Vec<Vec<u8>> {
    let f: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let l: Vec<u8> = (0..3).flat_map(|i| (i as i64).to_le_bytes()).collect();
    let d: Vec<u8> = (0..6).flat_map(|i| (i as f64).to_be_bytes()).collect();
    let u: Vec<u8> = vec![1, 2, 3];
    vec![
        join2(
            &aidos_datasets::encode_npy("<f4", false, &[3, 2], &f),
            &aidos_datasets::encode_npy("<i8", false, &[3], &l),
        ),
        join2(
            &aidos_datasets::encode_npy(">f8", true, &[2, 3], &d),
            &aidos_datasets::encode_npy("|u1", false, &[2], &u[..2]),
        ),
        join2(
            &aidos_datasets::encode_npy("|u1", false, &[3, 1], &u),
            &aidos_datasets::encode_npy("<u2", false, &[3], &[0; 6]),
        ),
    ]
}

/// A Gemm + Relu + Gemm + Softmax graph (the exported MLP's shape, small: `x: [N, 4]` to `[N, 3]`).
pub fn onnx() -> Vec<Vec<u8>> {
    let mut g = graph::Graph::default();
    let h = g.dense("x", 4, 8);
    let r = g.relu(&h);
    let z = g.dense(&r, 8, 3);
    g.node("Softmax", &[z], vec![]);
    vec![g.onnx_with_input(&[4])]
}

pub fn blob_upload() -> Vec<Vec<u8>> {
    let data = b"some bytes of a dataset chunk".to_vec();
    let id = aidos_blob::BlobId::of(&data).to_string();
    let mut v = Vec::new();
    BlobUploadChunk { id: id.clone(), size: data.len() as u64, data: data[..10].to_vec().into() }
        .encode_length_delimited(&mut v)
        .unwrap();
    BlobUploadChunk { data: data[10..].to_vec().into(), ..Default::default() }.encode_length_delimited(&mut v).unwrap();
    let mut long = v.clone();
    BlobUploadChunk { data: b"!".to_vec().into(), ..Default::default() }.encode_length_delimited(&mut long).unwrap();
    vec![v, long]
}

pub fn task_log() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for (i, text) in ["epoch 1\n", "loss 0.3\n", "warning\n"].iter().enumerate() {
        let c = LogChunk { rank: i as u32, attempt: 1, stream: 1 + (i % 2) as i32, data: text.as_bytes().to_vec() };
        aidos_api::logframe::encode_chunk(&mut v, &c);
    }
    v.extend_from_slice(&[1, 0, 0]);
    vec![v]
}
