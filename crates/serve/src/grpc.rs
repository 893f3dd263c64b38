//! The gRPC front: `inference.GRPCInferenceService` (Open Inference Protocol v2), wire compatible with the
//! published protocol (tritonclient.grpc works against it). Inputs come as `raw_input_contents` (what
//! tritonclient sends) or typed `contents.fp32_contents`; outputs always go back as `raw_output_contents`, as
//! Triton does.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::ServerState;
use crate::error::ServeError;
use crate::protocol::{self, InputTensor};

/// Generated from `proto/kserve/grpc_predict_v2.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");

    /// The encoded descriptors of `inference` (server reflection serves them).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptors");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use pb::*;

pub fn service(state: Arc<ServerState>) -> GrpcInferenceServiceServer<Front> {
    let limit = state.limits.max_request_bytes;
    GrpcInferenceServiceServer::new(Front { s: state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

pub struct Front {
    s: Arc<ServerState>,
}

/// The service's implementation without tonic's server wrapper (called in-process by the fuzz targets).
pub fn front(state: Arc<ServerState>) -> Front {
    Front { s: state }
}

type R<T> = Result<Response<T>, Status>;

impl Front {
    /// The first thing every method does: its rule in [`crate::auth::grpc_rule`] against the server's authorizer.
    /// The permit (per-key limits) is held by the caller until its answer is built.
    async fn check<T>(
        &self,
        method: &str,
        model: &str,
        r: &Request<T>,
    ) -> Result<Option<aidos_api::limits::Permit>, Status> {
        crate::auth::check_grpc(&self.s, method, model, r).await
    }
}

/// The method names of `inference.GRPCInferenceService`, from its compiled descriptors.
pub fn method_names() -> Vec<String> {
    aidos_api::rpcs_of(pb::FILE_DESCRIPTOR_SET)
        .into_iter()
        .filter_map(|p| p.strip_prefix("/inference.GRPCInferenceService/").map(str::to_string))
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Front {
    async fn server_live(&self, r: Request<ServerLiveRequest>) -> R<ServerLiveResponse> {
        let _permit = self.check("ServerLive", "", &r).await?;
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, r: Request<ServerReadyRequest>) -> R<ServerReadyResponse> {
        let _permit = self.check("ServerReady", "", &r).await?;
        Ok(Response::new(ServerReadyResponse { ready: !self.s.repo.is_empty() }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> R<ModelReadyResponse> {
        let _permit = self.check("ModelReady", &r.get_ref().name, &r).await?;
        let r = r.into_inner();
        Ok(Response::new(ModelReadyResponse { ready: self.s.repo.resolve(&r.name, &r.version).is_ok() }))
    }

    async fn server_metadata(&self, r: Request<ServerMetadataRequest>) -> R<ServerMetadataResponse> {
        let _permit = self.check("ServerMetadata", "", &r).await?;
        Ok(Response::new(ServerMetadataResponse {
            name: self.s.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: protocol::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, r: Request<ModelMetadataRequest>) -> R<ModelMetadataResponse> {
        let _permit = self.check("ModelMetadata", &r.get_ref().name, &r).await?;
        let r = r.into_inner();
        let v = self.s.repo.resolve(&r.name, &r.version)?;
        let m = v.backend.metadata();
        let t = |specs: &[aidos_runtime::TensorSpec]| {
            specs
                .iter()
                .map(|t| model_metadata_response::TensorMetadata {
                    name: t.name.clone(),
                    datatype: t.datatype.as_str().into(),
                    shape: t.shape.clone(),
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: r.name.clone(),
            versions: self.s.repo.versions(&r.name).iter().map(u64::to_string).collect(),
            platform: m.platform.clone(),
            inputs: t(&m.inputs),
            outputs: t(&m.outputs),
        }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> R<ModelInferResponse> {
        let _permit = self.check("ModelInfer", &r.get_ref().model_name, &r).await?;
        Ok(Response::new(infer(&self.s, r.into_inner()).await?))
    }
}

/// Runs one `ModelInfer` message (already authorized): the gRPC front's, and the HTTP front's protobuf bodies
/// ([`crate::http`]: what the gateway sends its replicas).
pub(crate) async fn infer(s: &ServerState, r: ModelInferRequest) -> Result<ModelInferResponse, ServeError> {
    let v = s.repo.resolve(&r.model_name, &r.model_version)?;
    if let Some(f) = v.backend.forwarder() {
        return f.grpc(r).await;
    }
    let raw = !r.raw_input_contents.is_empty();
    if raw && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServeError::InvalidInput(format!(
            "{} raw_input_contents for {} inputs",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.into_iter().enumerate() {
        let data = if raw {
            let bytes = &r.raw_input_contents[i];
            if bytes.len() > s.limits.max_tensor_bytes {
                return Err(protocol::too_large(&t.name, bytes.len(), s.limits.max_tensor_bytes));
            }
            protocol::f32_from_le(&t.name, bytes)?
        } else {
            t.contents.map(|c| c.fp32_contents).unwrap_or_default()
        };
        inputs.push(InputTensor { name: t.name, datatype: t.datatype, shape: t.shape, data });
    }
    let meta = v.backend.metadata();
    let tensors = protocol::prepare(meta, inputs, &s.limits)?;
    let names: Vec<String> = r.outputs.iter().map(|o| o.name.clone()).collect();
    let selected = protocol::select_outputs(meta, &names)?;
    let outputs = v.backend.infer(tensors).await?;
    let mut resp = ModelInferResponse {
        model_name: r.model_name,
        model_version: v.version.to_string(),
        id: r.id,
        ..Default::default()
    };
    for ix in selected {
        let t = &outputs[ix];
        resp.outputs.push(model_infer_response::InferOutputTensor {
            name: meta.outputs[ix].name.clone(),
            datatype: "FP32".into(),
            shape: t.shape.iter().map(|d| *d as i64).collect(),
            ..Default::default()
        });
        resp.raw_output_contents.push(protocol::f32_to_le(&t.data).into());
    }
    Ok(resp)
}
