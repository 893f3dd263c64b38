//! The edge deployment signature contract, shared by the control plane (signs) and the agent (verifies): one
//! definition so that the two cannot drift apart.

use crate::v1::EdgeDeployment;

/// Domain separation: a signature over these bytes can mean nothing else.
const DOMAIN: &[u8] = b"aidos-edge-deployment-v1\n";

/// The bytes an edge deployment's ed25519 signature covers: deployment name, model and version, the artifact's
/// content hash and size, and the health-check sample (input and expected output, little-endian f32), each
/// length-prefixed so that no two deployments share an encoding.
pub fn signed_bytes(d: &EdgeDeployment) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    let mut field = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
    };
    field(d.name.as_bytes());
    field(d.model.as_bytes());
    field(&d.version.to_le_bytes());
    field(d.artifact.as_bytes());
    field(&d.size.to_le_bytes());
    let floats = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    field(&floats(&d.sample_input));
    field(&floats(&d.sample_output));
    out
}

/// Whether `labels` satisfy every `key=value` of `selector` (an empty selector matches every device).
pub fn selector_matches(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
