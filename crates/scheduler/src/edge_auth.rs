//! Who may enrol as an edge device, and who may speak for one. Pure functions: the leader calls [`admit`] before
//! it proposes an enrolment, and every sync and download goes through [`check`].
//!
//! A device proves itself with a credential: [`CREDENTIAL_LEN`] random bytes its agent makes at first start and
//! keeps in its cache. The replicated state holds only BLAKE3 of it, and the log never sees the credential or the
//! enrolment token. The rules:
//! - a new device name enrols with the control plane's enrolment token when one is configured; without one
//!   enrolment is open (the embedded default of `aidos up`);
//! - a known name enrols again with its current credential (an agent restart) or with the token (a device whose
//!   cache was wiped); with no token configured only its credential will do, so an open control plane still never
//!   lets a second agent take over a device's name;
//! - sync and download need the credential of an enrolled device.
//!
//! Devices enrolled before credentials existed (an empty hash) pass every sync and download until their next
//! enrolment, which is treated as a new name's and records the credential.
//! Two agents enrolling the same new name at the same moment both pass [`admit`]; the later entry wins and the other
//! agent's next call fails [`check`], so it never serves as that device. Credentials travel in the clear over
//! plaintext gRPC, like everything else until the control plane speaks TLS.

use aidos_api::v1::{EdgeDevice, EnrollRequest};

use crate::error::SchedulerError;

/// Bytes in a device credential.
pub const CREDENTIAL_LEN: usize = 32;

/// What the state stores for a credential.
pub fn credential_hash(credential: &[u8]) -> Vec<u8> {
    blake3::hash(credential).as_bytes().to_vec()
}

/// Constant-time equality of two secrets (compares their BLAKE3 hashes, whose `==` is constant-time).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    blake3::hash(a) == blake3::hash(b)
}

/// Whether `r` may enrol, given the device row for its name (if any) and the configured token. Ok: the credential
/// hash to record.
pub fn admit(existing: Option<&EdgeDevice>, token: Option<&str>, r: &EnrollRequest) -> Result<Vec<u8>, SchedulerError> {
    if r.credential.len() != CREDENTIAL_LEN {
        return Err(SchedulerError::InvalidArgument(format!(
            "credential: {} bytes, expected {CREDENTIAL_LEN} (an agent older than the control plane?)",
            r.credential.len()
        )));
    }
    let hash = credential_hash(&r.credential);
    let token_ok = token.is_some_and(|t| same_secret(t.as_bytes(), r.enrollment_token.as_bytes()));
    let token_state = if r.enrollment_token.is_empty() { "missing" } else { "wrong" };
    match existing.map(|d| d.credential_hash.as_slice()).filter(|h| !h.is_empty()) {
        Some(h) if same_secret(h, &hash) => Ok(hash),
        Some(_) if token_ok => Ok(hash),
        Some(_) if token.is_none() => Err(SchedulerError::PermissionDenied(format!(
            "device {} is enrolled with another credential (another agent, or a wiped cache): to enrol it again, \
             start the control plane with --edge-enrollment-token and give the agent that token",
            r.device
        ))),
        Some(_) => Err(SchedulerError::PermissionDenied(format!(
            "device {} is enrolled with another credential and the enrolment token is {token_state}",
            r.device
        ))),
        None if token.is_none() || token_ok => Ok(hash),
        None => Err(SchedulerError::PermissionDenied(format!(
            "device {}: enrolment token {token_state} (the agent's --enrollment-token)",
            r.device
        ))),
    }
}

/// Whether a call that names device `name` and presents `credential` speaks for it.
pub fn check(device: Option<&EdgeDevice>, name: &str, credential: &[u8]) -> Result<(), SchedulerError> {
    match device {
        None => Err(SchedulerError::NotFound(format!("device {name} is not enrolled: enroll first"))),
        Some(d) if d.credential_hash.is_empty() => Ok(()),
        Some(d) if same_secret(&d.credential_hash, &credential_hash(credential)) => Ok(()),
        Some(_) => Err(SchedulerError::Unauthenticated(format!(
            "device {name}: the credential does not match the one it enrolled with"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(device: &str, cred: u8, token: &str) -> EnrollRequest {
        EnrollRequest {
            device: device.into(),
            credential: vec![cred; CREDENTIAL_LEN],
            enrollment_token: token.into(),
            ..Default::default()
        }
    }

    fn enrolled(cred: u8) -> EdgeDevice {
        EdgeDevice {
            name: "cam".into(),
            credential_hash: credential_hash(&[cred; CREDENTIAL_LEN]),
            ..Default::default()
        }
    }

    fn denied(r: Result<Vec<u8>, SchedulerError>) -> String {
        match r {
            Err(SchedulerError::PermissionDenied(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn open_enrolment_admits_new_names_but_never_a_second_credential_for_a_known_one() {
        assert_eq!(admit(None, None, &req("cam", 1, "")).unwrap(), credential_hash(&[1; 32]));
        assert!(admit(Some(&enrolled(1)), None, &req("cam", 1, "")).is_ok(), "a restart with its credential");
        let m = denied(admit(Some(&enrolled(1)), None, &req("cam", 2, "anything")));
        assert!(m.contains("another credential") && m.contains("--edge-enrollment-token"), "{m}");
        // Rows from before credentials: taken over by the first agent that enrols.
        assert!(admit(Some(&EdgeDevice::default()), None, &req("cam", 2, "")).is_ok());
    }

    #[test]
    fn a_token_gates_new_names_and_lets_a_wiped_device_enrol_again() {
        let t = Some("s3cret");
        assert!(denied(admit(None, t, &req("cam", 1, ""))).contains("token missing"));
        assert!(denied(admit(None, t, &req("cam", 1, "s3creT"))).contains("token wrong"));
        assert!(admit(None, t, &req("cam", 1, "s3cret")).is_ok());
        assert!(admit(Some(&enrolled(1)), t, &req("cam", 1, "")).is_ok(), "its credential is enough");
        assert!(admit(Some(&enrolled(1)), t, &req("cam", 2, "s3cret")).is_ok(), "the token replaces a lost one");
        assert!(denied(admit(Some(&enrolled(1)), t, &req("cam", 2, "nope"))).contains("token is wrong"));
    }

    #[test]
    fn malformed_credentials_are_refused_by_name() {
        let mut r = req("cam", 1, "");
        r.credential.truncate(5);
        let e = admit(None, None, &r).unwrap_err().to_string();
        assert!(e.contains("credential: 5 bytes"), "{e}");
    }

    #[test]
    fn calls_need_the_enrolled_credential() {
        let d = enrolled(1);
        assert!(check(Some(&d), "cam", &[1; 32]).is_ok());
        assert!(matches!(check(Some(&d), "cam", &[2; 32]), Err(SchedulerError::Unauthenticated(_))));
        assert!(matches!(check(Some(&d), "cam", &[]), Err(SchedulerError::Unauthenticated(_))));
        assert!(matches!(check(None, "cam", &[1; 32]), Err(SchedulerError::NotFound(_))));
        assert!(check(Some(&EdgeDevice::default()), "cam", &[]).is_ok(), "a row from before credentials");
    }
}
