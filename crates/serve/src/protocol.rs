//! Open Inference Protocol (KServe v2) request checking, shared by the HTTP and gRPC fronts.
//!
//! Both fronts decode a request into [`InputTensor`]s and call [`prepare`], which checks everything against the
//! model's signature and the server's [`Limits`] before the request reaches a queue: known tensor names, every
//! input present once, datatype, shape (rank, fixed dimensions, element count), size limit, same batch size on
//! every input, and finite values (NaN / infinity are refused). Each error names the tensor and the problem.

use aidos_runtime::{ModelMetadata, Tensor};

use crate::config::Limits;
use crate::error::ServeError;

/// Protocol extensions this server implements (reported by server metadata).
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "model_repository"];

/// One decoded input tensor, before checking.
#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// Element count of a declared shape, checked: every dimension non-negative and the total within `max_elems`.
pub fn element_count(name: &str, shape: &[i64], max_bytes: usize, elem: usize) -> Result<usize, ServeError> {
    let mut n: usize = 1;
    for d in shape {
        if *d < 0 {
            return Err(ServeError::InvalidInput(format!("input `{name}`: shape {shape:?} has a negative dimension")));
        }
        n = n.checked_mul(*d as usize).ok_or_else(|| too_large(name, usize::MAX, max_bytes))?;
    }
    if n.saturating_mul(elem) > max_bytes {
        return Err(too_large(name, n.saturating_mul(elem), max_bytes));
    }
    Ok(n)
}

/// The error for an input tensor of `bytes` bytes over the limit `max` (every front uses this one).
pub fn too_large(name: &str, bytes: usize, max: usize) -> ServeError {
    ServeError::TooLarge(format!("input `{name}`: {bytes} bytes of tensor data exceed the limit of {max} bytes"))
}

/// Checks decoded inputs against the model and returns them in the model's input order.
pub fn prepare(meta: &ModelMetadata, inputs: Vec<InputTensor>, limits: &Limits) -> Result<Vec<Tensor>, ServeError> {
    let mut slots: Vec<Option<Tensor>> = vec![None; meta.inputs.len()];
    let mut rows: Option<usize> = None;
    for t in inputs {
        let Some(ix) = meta.inputs.iter().position(|s| s.name == t.name) else {
            let known: Vec<&str> = meta.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(ServeError::InvalidInput(format!(
                "unknown input `{}` (model inputs: {})",
                t.name,
                known.join(", ")
            )));
        };
        let spec = &meta.inputs[ix];
        if slots[ix].is_some() {
            return Err(ServeError::InvalidInput(format!("input `{}` given twice", t.name)));
        }
        if t.datatype != spec.datatype.as_str() {
            return Err(ServeError::InvalidInput(format!(
                "input `{}`: datatype {} does not match the model's {}",
                t.name, t.datatype, spec.datatype
            )));
        }
        let n = element_count(&t.name, &t.shape, limits.max_tensor_bytes, 4)?;
        let fits =
            t.shape.len() == spec.shape.len() && spec.shape.iter().zip(&t.shape).skip(1).all(|(s, d)| *s < 0 || s == d);
        if !fits {
            return Err(ServeError::InvalidInput(format!(
                "input `{}`: shape {:?} does not match the model's {:?} (-1: any size)",
                t.name, t.shape, spec.shape
            )));
        }
        if n != t.data.len() {
            return Err(ServeError::InvalidInput(format!(
                "input `{}`: shape {:?} needs {n} values, got {}",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(ServeError::InvalidInput(format!(
                "input `{}`: value #{i} is {} (inputs must be finite numbers)",
                t.name, t.data[i]
            )));
        }
        let r = t.shape[0] as usize;
        if *rows.get_or_insert(r) != r {
            return Err(ServeError::InvalidInput(format!(
                "input `{}`: batch dimension {r} differs from the other inputs' {}",
                t.name,
                rows.unwrap_or(0)
            )));
        }
        slots[ix] = Some(Tensor { shape: t.shape.iter().map(|d| *d as usize).collect(), data: t.data });
    }
    slots
        .into_iter()
        .zip(&meta.inputs)
        .map(|(t, s)| t.ok_or_else(|| ServeError::InvalidInput(format!("missing input `{}`", s.name))))
        .collect()
}

/// Decodes little-endian FP32 raw bytes (binary extension, gRPC raw contents).
pub fn f32_from_le(name: &str, raw: &[u8]) -> Result<Vec<f32>, ServeError> {
    if !raw.len().is_multiple_of(4) {
        return Err(ServeError::InvalidInput(format!(
            "input `{name}`: {} bytes of raw FP32 data is not a multiple of 4",
            raw.len()
        )));
    }
    Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Encodes FP32 values as little-endian bytes.
pub fn f32_to_le(data: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Which outputs to return: those requested (checked against the model), or all of them.
pub fn select_outputs(meta: &ModelMetadata, requested: &[String]) -> Result<Vec<usize>, ServeError> {
    if requested.is_empty() {
        return Ok((0..meta.outputs.len()).collect());
    }
    requested
        .iter()
        .map(|name| {
            meta.outputs.iter().position(|o| &o.name == name).ok_or_else(|| {
                let known: Vec<&str> = meta.outputs.iter().map(|s| s.name.as_str()).collect();
                ServeError::InvalidInput(format!("unknown output `{name}` (model outputs: {})", known.join(", ")))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_runtime::{DataType, TensorSpec};

    fn meta() -> ModelMetadata {
        ModelMetadata {
            platform: "test".into(),
            inputs: vec![TensorSpec { name: "input".into(), datatype: DataType::Fp32, shape: vec![-1, 3] }],
            outputs: vec![TensorSpec { name: "logits".into(), datatype: DataType::Fp32, shape: vec![-1, 2] }],
        }
    }

    fn t(name: &str, dt: &str, shape: Vec<i64>, data: Vec<f32>) -> InputTensor {
        InputTensor { name: name.into(), datatype: dt.into(), shape, data }
    }

    fn err(inputs: Vec<InputTensor>) -> String {
        prepare(&meta(), inputs, &Limits { max_request_bytes: 1 << 20, max_tensor_bytes: 64 }).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_fitting_batch() {
        let out = prepare(&meta(), vec![t("input", "FP32", vec![2, 3], vec![0.0; 6])], &Limits::default()).unwrap();
        assert_eq!(out[0].shape, vec![2, 3]);
    }

    #[test]
    fn names_each_problem() {
        assert!(err(vec![t("x", "FP32", vec![1, 3], vec![0.0; 3])]).contains("unknown input `x`"));
        assert!(err(vec![t("input", "INT64", vec![1, 3], vec![0.0; 3])]).contains("datatype INT64"));
        assert!(err(vec![t("input", "FP32", vec![1, 4], vec![0.0; 4])]).contains("does not match the model's [-1, 3]"));
        assert!(err(vec![t("input", "FP32", vec![2, 3], vec![0.0; 3])]).contains("needs 6 values, got 3"));
        assert!(err(vec![t("input", "FP32", vec![1, 3], vec![0.0, f32::NAN, 1.0])]).contains("value #1 is NaN"));
        assert!(err(vec![t("input", "FP32", vec![100, 3], vec![0.0; 300])]).contains("exceed the limit of 64 bytes"));
        assert!(err(vec![t("input", "FP32", vec![-1, 3], vec![])]).contains("negative dimension"));
        assert!(err(vec![]).contains("missing input `input`"));
    }
}
