//! Who may enrol as an edge device, and who may speak for one. Pure functions: the leader calls [`admit`] before
//! it proposes an enrolment, and every sync and download goes through [`check`].
//!
//! A device proves itself with a credential: [`CREDENTIAL_LEN`] random bytes its agent makes at first start and
//! keeps in its cache. The replicated state holds only BLAKE3 of it, and the log never sees the credential or the
//! enrolment token. The rules:
//! - a new device name enrols with the control plane's enrolment token when one is configured, or with a one-time
//!   join token (`aidos token create --role worker --join`), which the enrolment uses up; without either,
//!   enrolment is open only on a control plane that does not serve TLS (the embedded default of `aidos up`, or an
//!   `--insecure` cluster);
//! - on a control plane that serves TLS the device also gets a certificate (`aidos-device:<name>`) for the key its
//!   agent made, and Sync and Download need that certificate ([`cert_speaks_for`]) as well as the credential. The
//!   agent renews it by enrolling again with its credential and a new request before it expires; the renewal
//!   retires the previous certificate;
//! - a known name enrols again with its current credential (an agent restart) or with the token (a device whose
//!   cache was wiped); with no token configured only its credential will do, so an open control plane still never
//!   lets a second agent take over a device's name;
//! - sync and download need the credential of an enrolled device.
//!
//! Devices enrolled before credentials existed (an empty hash) pass every sync and download until their next
//! enrolment, which is treated as a new name's and records the credential.
//! Two agents enrolling the same new name at the same moment both pass [`admit`]; the later entry wins and the other
//! agent's next call fails [`check`], so it never serves as that device. On a control plane without TLS,
//! credentials travel in the clear.

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

/// How an enrolment was admitted (what [`admit`] asks of the leader next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The device's own credential (a known device), or open enrolment of a new one.
    Credential,
    /// The control plane's shared enrolment token.
    SharedToken,
    /// A one-time join token: the leader checks it and uses it up before the enrolment is recorded.
    JoinToken,
}

/// Whether `r` may enrol, given the device row for its name (if any), the configured shared token and whether the
/// control plane serves TLS (then a new device needs a token: enrolment is never open). Ok: the credential hash to
/// record, and what admitted it.
pub fn admit(
    existing: Option<&EdgeDevice>,
    token: Option<&str>,
    tls: bool,
    r: &EnrollRequest,
) -> Result<(Vec<u8>, Admission), SchedulerError> {
    if r.credential.len() != CREDENTIAL_LEN {
        return Err(SchedulerError::InvalidArgument(format!(
            "credential: {} bytes, expected {CREDENTIAL_LEN} (an agent older than the control plane?)",
            r.credential.len()
        )));
    }
    let hash = credential_hash(&r.credential);
    // A certificate on record is this agent's only if the credential is the one it was given with (another
    // credential clears it when applied).
    let has_cert = existing.is_some_and(|d| !d.cert_serial.is_empty() && same_secret(&d.credential_hash, &hash));
    if tls && r.csr_pem.is_empty() && !has_cert {
        return Err(SchedulerError::InvalidArgument(format!(
            "csr_pem: device {} has no certificate and asked for none (this control plane serves TLS: an agent \
             given --server-ca asks for one)",
            r.device
        )));
    }
    let token_ok = token.is_some_and(|t| same_secret(t.as_bytes(), r.enrollment_token.as_bytes()));
    let token_state = if r.enrollment_token.is_empty() { "missing" } else { "wrong" };
    let join = !r.join_token.is_empty();
    match existing.map(|d| d.credential_hash.as_slice()).filter(|h| !h.is_empty()) {
        Some(h) if same_secret(h, &hash) => Ok((hash, Admission::Credential)),
        _ if token_ok => Ok((hash, Admission::SharedToken)),
        _ if join => Ok((hash, Admission::JoinToken)),
        Some(_) if token.is_none() => Err(SchedulerError::PermissionDenied(format!(
            "device {} is enrolled with another credential (another agent, or a wiped cache): to enrol it again, \
             give the agent a join token (`aidos token create --role worker --join`, the agent's --join-token)",
            r.device
        ))),
        Some(_) => Err(SchedulerError::PermissionDenied(format!(
            "device {} is enrolled with another credential and the enrolment token is {token_state}",
            r.device
        ))),
        None if token.is_none() && !tls => Ok((hash, Admission::Credential)),
        None if token.is_none() => Err(SchedulerError::PermissionDenied(format!(
            "device {}: a new device needs a join token on a control plane that serves TLS (`aidos token create \
             --role worker --join`, the agent's --join-token)",
            r.device
        ))),
        None => Err(SchedulerError::PermissionDenied(format!(
            "device {}: enrolment token {token_state} (the agent's --enrollment-token), and no join token",
            r.device
        ))),
    }
}

/// The project an enrolment puts the device in: a join token made for one project decides it; a known device
/// stays where it is unless a join token moves it; otherwise the agent's `--project` (`requested`, "": the default
/// project). `join_project`: the project of the join token that admitted this enrolment, if one did. Pure.
pub fn project_for(
    existing: Option<&EdgeDevice>,
    join_project: Option<&str>,
    requested: &str,
) -> Result<String, SchedulerError> {
    use aidos_api::auth::{ALL_PROJECTS, project_or_default};
    let device = existing.map(|d| d.name.as_str()).unwrap_or("the device");
    match (join_project.filter(|p| *p != ALL_PROJECTS), existing) {
        (Some(p), _) if !requested.is_empty() && requested != p => Err(SchedulerError::PermissionDenied(format!(
            "project: the join token is for project {p}, not {requested}"
        ))),
        (Some(p), _) => Ok(p.to_string()),
        (None, Some(d)) if join_project.is_none() => {
            let current = project_or_default(&d.project);
            if requested.is_empty() || requested == current {
                Ok(current.to_string())
            } else {
                Err(SchedulerError::PermissionDenied(format!(
                    "project: {device} belongs to project {current}; a join token of project {requested} moves it"
                )))
            }
        }
        (None, Some(d)) if requested.is_empty() => Ok(project_or_default(&d.project).to_string()),
        _ => Ok(project_or_default(requested).to_string()),
    }
}

/// Whether a client certificate naming device `name` with serial `serial` speaks for it: the device is enrolled
/// and this is the certificate its latest enrolment was given (a renewal retires the one before).
pub fn cert_speaks_for(device: Option<&EdgeDevice>, name: &str, serial: &str) -> Result<(), String> {
    match device {
        None => Err(format!("device {name} is not enrolled")),
        Some(d) if d.cert_serial.is_empty() => Err(format!("device {name} was given no certificate")),
        Some(d) if d.cert_serial != serial => {
            Err(format!("certificate {serial} is not device {name}'s current one (it was renewed or re-enrolled)"))
        }
        Some(_) => Ok(()),
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

    fn denied(r: Result<(Vec<u8>, Admission), SchedulerError>) -> String {
        match r {
            Err(SchedulerError::PermissionDenied(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn open_enrolment_admits_new_names_but_never_a_second_credential_for_a_known_one() {
        let open = admit(None, None, false, &req("cam", 1, "")).unwrap();
        assert_eq!(open, (credential_hash(&[1; 32]), Admission::Credential));
        assert!(admit(Some(&enrolled(1)), None, false, &req("cam", 1, "")).is_ok(), "a restart with its credential");
        let m = denied(admit(Some(&enrolled(1)), None, false, &req("cam", 2, "anything")));
        assert!(m.contains("another credential") && m.contains("--join-token"), "{m}");
        // Rows from before credentials: taken over by the first agent that enrols.
        assert!(admit(Some(&EdgeDevice::default()), None, false, &req("cam", 2, "")).is_ok());
    }

    #[test]
    fn a_token_gates_new_names_and_lets_a_wiped_device_enrol_again() {
        let t = Some("s3cret");
        assert!(denied(admit(None, t, false, &req("cam", 1, ""))).contains("token missing"));
        assert!(denied(admit(None, t, false, &req("cam", 1, "s3creT"))).contains("token wrong"));
        assert_eq!(admit(None, t, false, &req("cam", 1, "s3cret")).unwrap().1, Admission::SharedToken);
        assert!(admit(Some(&enrolled(1)), t, false, &req("cam", 1, "")).is_ok(), "its credential is enough");
        let lost = admit(Some(&enrolled(1)), t, false, &req("cam", 2, "s3cret"));
        assert!(lost.is_ok(), "the token replaces a lost one");
        assert!(denied(admit(Some(&enrolled(1)), t, false, &req("cam", 2, "nope"))).contains("token is wrong"));
    }

    #[test]
    fn on_a_tls_control_plane_a_new_device_needs_a_token_and_asks_for_a_certificate() {
        let with_csr =
            |cred, join: &str| EnrollRequest { join_token: join.into(), csr_pem: "csr".into(), ..req("cam", cred, "") };
        let m = denied(admit(None, None, true, &with_csr(1, "")));
        assert!(m.contains("needs a join token"), "{m}");
        assert_eq!(admit(None, None, true, &with_csr(1, "aidos_j_x")).unwrap().1, Admission::JoinToken);
        assert_eq!(admit(Some(&enrolled(1)), None, true, &with_csr(2, "aidos_j_x")).unwrap().1, Admission::JoinToken);
        // A renewal: its credential and a new request; no request while it holds a certificate is fine too.
        assert_eq!(admit(Some(&enrolled(1)), None, true, &with_csr(1, "")).unwrap().1, Admission::Credential);
        let certified = EdgeDevice { cert_serial: "0a".into(), ..enrolled(1) };
        assert!(admit(Some(&certified), None, true, &req("cam", 1, "")).is_ok());
        let takeover = EnrollRequest { join_token: "aidos_j_x".into(), ..req("cam", 2, "") };
        let e = admit(Some(&certified), None, true, &takeover).unwrap_err().to_string();
        assert!(e.contains("csr_pem"), "another agent's certificate is not this one's: {e}");
        let e = admit(Some(&enrolled(1)), None, true, &req("cam", 1, "")).unwrap_err().to_string();
        assert!(e.contains("csr_pem"), "{e}");
    }

    #[test]
    fn projects_come_from_join_tokens_then_stay() {
        let in_a = EdgeDevice { project: "a".into(), ..enrolled(1) };
        assert_eq!(project_for(None, None, "").unwrap(), "default");
        assert_eq!(project_for(None, None, "b").unwrap(), "b");
        assert_eq!(project_for(None, Some("a"), "").unwrap(), "a", "the token's project");
        assert_eq!(project_for(None, Some("*"), "b").unwrap(), "b", "a cluster-wide token: the agent's");
        assert!(project_for(None, Some("a"), "b").unwrap_err().to_string().contains("join token is for project a"));
        assert_eq!(project_for(Some(&in_a), None, "").unwrap(), "a", "a known device stays");
        assert_eq!(project_for(Some(&in_a), None, "a").unwrap(), "a");
        assert!(project_for(Some(&in_a), None, "b").unwrap_err().to_string().contains("belongs to project a"));
        assert_eq!(project_for(Some(&in_a), Some("b"), "").unwrap(), "b", "a join token moves it");
        assert_eq!(project_for(Some(&in_a), Some("*"), "").unwrap(), "a");
        assert_eq!(project_for(Some(&enrolled(1)), None, "").unwrap(), "default", "from before projects");
    }

    #[test]
    fn only_the_current_certificate_speaks_for_a_device() {
        let d = EdgeDevice { cert_serial: "0b".into(), ..enrolled(1) };
        assert!(cert_speaks_for(Some(&d), "cam", "0b").is_ok());
        assert!(cert_speaks_for(Some(&d), "cam", "0a").unwrap_err().contains("renewed"));
        assert!(cert_speaks_for(Some(&enrolled(1)), "cam", "0b").is_err());
        assert!(cert_speaks_for(None, "cam", "0b").unwrap_err().contains("not enrolled"));
    }

    #[test]
    fn malformed_credentials_are_refused_by_name() {
        let mut r = req("cam", 1, "");
        r.credential.truncate(5);
        let e = admit(None, None, false, &r).unwrap_err().to_string();
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
