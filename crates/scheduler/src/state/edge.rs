//! The edge domain: devices and edge deployments (table `Rows`, `e/<device>` and `x/<deployment>`).
//!
//! Invariants and limits:
//! - A device keeps at most [`MAX_TELEMETRY_PER_DEVICE`] telemetry records (the oldest are dropped); one report
//!   carries at most [`MAX_TELEMETRY_PER_REPORT`].
//! - An edge deployment is stored only with a signature (the leader signs before proposing); it is immutable
//!   except by a new deploy under the same name, which replaces it.
//! - Which deployment a device runs is a pure function of its labels and the deployments ([`desired_for`]): the
//!   newest deployment whose selector matches.
//! - "Last seen" is leader memory (like worker heartbeats), never a log entry; ListDevices asks the leader and
//!   falls back to when the device's last report was committed.

use std::collections::BTreeMap;

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::{CommandResultV1, EdgeDeployment, EdgeDevice, EdgeSyncRequest, EnrollRequest, StateSnapshotV1};
use prost::Message;

use super::{Dirty, Domain, JobsState, Refusal, RowKind, Rows, Table, bad, check_name, not_found, refuse};

const DEVICE_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "e/", snapshot_field: 11 };
const DEPLOYMENT_ROWS: RowKind = RowKind { table: Table::Rows, prefix: "x/", snapshot_field: 12 };

pub const MAX_TELEMETRY_PER_DEVICE: usize = 1000;
pub const MAX_TELEMETRY_PER_REPORT: usize = 500;
/// Most values in a health-check sample (input or output).
pub const MAX_SAMPLE_VALUES: usize = 1 << 20;
/// Most labels on a device or in a selector, and the longest label.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;

pub fn device_key(name: &str) -> String {
    format!("e/{name}")
}
pub fn edge_deployment_key(name: &str) -> String {
    format!("x/{name}")
}

/// What an enrolment must satisfy (the leader asks before it uses a join token up; apply again).
pub fn check_enrollment(r: &EnrollRequest) -> Result<(), Refusal> {
    check_name("device", &r.device)?;
    if !r.project.is_empty() {
        check_name("project", &r.project)?;
    }
    check_labels("labels", &r.labels)
}

fn check_labels(field: &str, l: &std::collections::BTreeMap<String, String>) -> Result<(), Refusal> {
    if l.len() > MAX_LABELS {
        return Err(bad(field, format!("{} labels, at most {MAX_LABELS}", l.len())));
    }
    for (k, v) in l {
        if k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN {
            return Err(bad(
                field,
                format!("label {k:?}={v:?}: keys 1-{MAX_LABEL_LEN} bytes, values up to {MAX_LABEL_LEN}"),
            ));
        }
    }
    Ok(())
}

/// The deployment `device` should run: the newest one of its project whose selector matches its labels.
pub fn desired_for<'a>(
    device: &EdgeDevice,
    deployments: impl Iterator<Item = &'a EdgeDeployment>,
) -> Option<&'a EdgeDeployment> {
    let project = aidos_api::auth::project_or_default(&device.project);
    deployments
        .filter(|d| aidos_api::auth::project_or_default(&d.project) == project)
        .filter(|d| aidos_api::edge::selector_matches(&d.selector, &device.labels))
        .max_by_key(|d| (d.created_at_ms, d.name.clone()))
}

/// Enrolled devices and edge deployments, by name.
#[derive(Debug, Default, Clone)]
pub struct EdgeState {
    pub devices: BTreeMap<String, EdgeDevice>,
    pub deployments: BTreeMap<String, EdgeDeployment>,
}

impl Rows for EdgeState {
    const ROWS: &'static [RowKind] = &[DEVICE_ROWS, DEPLOYMENT_ROWS];

    fn row(&self, _table: Table, key: &str) -> Option<Vec<u8>> {
        if let Some(name) = key.strip_prefix(DEVICE_ROWS.prefix) {
            return self.devices.get(name).map(|d| d.encode_to_vec());
        }
        self.deployments.get(key.strip_prefix(DEPLOYMENT_ROWS.prefix)?).map(|d| d.encode_to_vec())
    }

    fn load_row(&mut self, _table: Table, key: &str, bytes: &[u8]) -> Result<(), prost::DecodeError> {
        if key.starts_with(DEVICE_ROWS.prefix) {
            let d = EdgeDevice::decode(bytes)?;
            self.devices.insert(d.name.clone(), d);
        } else {
            let d = EdgeDeployment::decode(bytes)?;
            self.deployments.insert(d.name.clone(), d);
        }
        Ok(())
    }

    fn keys(&self) -> Vec<(Table, String)> {
        let devices = self.devices.keys().map(|d| device_key(d));
        devices.chain(self.deployments.keys().map(|d| edge_deployment_key(d))).map(|k| (Table::Rows, k)).collect()
    }

    fn snapshot(&self, out: &mut StateSnapshotV1) {
        out.edge_devices = self.devices.values().cloned().collect();
        out.edge_deployments = self.deployments.values().cloned().collect();
    }

    fn restore(&mut self, s: &mut StateSnapshotV1) {
        for d in std::mem::take(&mut s.edge_devices) {
            self.devices.insert(d.name.clone(), d);
        }
        for d in std::mem::take(&mut s.edge_deployments) {
            self.deployments.insert(d.name.clone(), d);
        }
    }
}

impl Domain for EdgeState {
    fn apply(
        &mut self,
        cmd: &Command,
        now: i64,
        _jobs: &JobsState,
        dirty: &mut Dirty,
    ) -> Option<Result<CommandResultV1, Refusal>> {
        Some(match cmd {
            Command::EnrollDevice(r) => self.enroll_device(r, now, dirty),
            Command::EdgeDeploy(r) => self.edge_deploy(r, now, dirty),
            Command::EdgeReport(r) => self.edge_report(r, now, dirty),
            _ => return None,
        })
    }
}

impl EdgeState {
    fn enroll_device(&mut self, r: &EnrollRequest, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        check_enrollment(r)?;
        let d = self.devices.entry(r.device.clone()).or_insert_with(|| EdgeDevice {
            name: r.device.clone(),
            enrolled_at_ms: now,
            ..Default::default()
        });
        d.labels = r.labels.clone();
        d.hardware = r.hardware.chars().take(256).collect();
        d.runtimes = r.runtimes.iter().take(8).map(|s| s.chars().take(32).collect()).collect();
        d.agent_version = r.agent_version.chars().take(64).collect();
        if !r.project.is_empty() {
            d.project = r.project.clone();
        }
        if !r.credential_hash.is_empty() && r.credential_hash != d.credential_hash {
            d.credential_hash = r.credential_hash.clone();
            // Another agent (a new credential): the certificate of the one before speaks for it no more.
            d.cert_serial.clear();
            d.cert_not_after_ms = 0;
        }
        if !r.cert_serial.is_empty() {
            d.cert_serial = r.cert_serial.chars().take(64).collect();
            d.cert_not_after_ms = r.cert_not_after_ms;
        }
        dirty.mark(Table::Rows, device_key(&r.device));
        Ok(CommandResultV1::default())
    }

    fn edge_deploy(&mut self, d: &EdgeDeployment, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        check_name("name", &d.name)?;
        check_name("model", &d.model)?;
        check_labels("selector", &d.selector)?;
        if d.signature.len() != 64 {
            return Err(bad("signature", "missing (the leader signs before proposing)"));
        }
        if d.sample_input.is_empty() || d.sample_output.is_empty() {
            return Err(bad("sample", "a health-check sample (input and expected output) is required"));
        }
        if d.sample_input.len() > MAX_SAMPLE_VALUES || d.sample_output.len() > MAX_SAMPLE_VALUES {
            return Err(bad("sample", format!("more than {MAX_SAMPLE_VALUES} values")));
        }
        if !d.project.is_empty() {
            check_name("project", &d.project)?;
        }
        let project = aidos_api::auth::project_or_default(&d.project);
        if let Some(old) = self.deployments.get(&d.name)
            && aidos_api::auth::project_or_default(&old.project) != project
        {
            return Err(refuse(
                tonic::Code::AlreadyExists,
                format!(
                    "edge deployment {} belongs to project {}",
                    d.name,
                    aidos_api::auth::project_or_default(&old.project)
                ),
            ));
        }
        let mut d = d.clone();
        d.created_at_ms = now;
        dirty.mark(Table::Rows, edge_deployment_key(&d.name));
        self.deployments.insert(d.name.clone(), d.clone());
        Ok(CommandResultV1 { edge_deployment: Some(d), ..Default::default() })
    }

    fn edge_report(&mut self, r: &EdgeSyncRequest, now: i64, dirty: &mut Dirty) -> Result<CommandResultV1, Refusal> {
        let d =
            self.devices.get_mut(&r.device).ok_or_else(|| not_found(format!("device {} is not enrolled", r.device)))?;
        if r.telemetry.len() > MAX_TELEMETRY_PER_REPORT {
            return Err(bad(
                "telemetry",
                format!("{} records in one report, at most {MAX_TELEMETRY_PER_REPORT}", r.telemetry.len()),
            ));
        }
        if let Some(s) = &r.status {
            let mut s = s.clone();
            s.last_error = s.last_error.chars().take(1024).collect();
            d.status = Some(s);
            d.status_at_ms = now;
        }
        d.telemetry.extend(r.telemetry.iter().cloned());
        if d.telemetry.len() > MAX_TELEMETRY_PER_DEVICE {
            let drop = d.telemetry.len() - MAX_TELEMETRY_PER_DEVICE;
            d.telemetry.drain(..drop);
        }
        dirty.mark(Table::Rows, device_key(&r.device));
        Ok(CommandResultV1::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(name: &str, sel: &[(&str, &str)], at: i64) -> EdgeDeployment {
        EdgeDeployment {
            name: name.into(),
            selector: sel.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created_at_ms: at,
            ..Default::default()
        }
    }

    #[test]
    fn a_device_runs_the_newest_matching_deployment() {
        let dev = EdgeDevice {
            labels: [("fleet", "cams"), ("site", "paris")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let ds = [
            dep("a", &[("fleet", "cams")], 1),
            dep("b", &[("fleet", "cams"), ("site", "paris")], 2),
            dep("c", &[("fleet", "doors")], 3),
        ];
        assert_eq!(desired_for(&dev, ds.iter()).unwrap().name, "b");
        let other = EdgeDevice { labels: [("fleet".to_string(), "doors".to_string())].into(), ..Default::default() };
        assert_eq!(desired_for(&other, ds.iter()).unwrap().name, "c");
        let none = EdgeDevice::default();
        assert!(desired_for(&none, ds.iter()).is_none());
        // Only its project's deployments: a newer one of another project with the same selector does not reach it.
        let mut ds = ds.to_vec();
        ds.push(EdgeDeployment { project: "other".into(), ..dep("z", &[("fleet", "cams")], 9) });
        assert_eq!(desired_for(&dev, ds.iter()).unwrap().name, "b");
        let theirs = EdgeDevice { project: "other".into(), ..dev.clone() };
        assert_eq!(desired_for(&theirs, ds.iter()).unwrap().name, "z");
    }

    #[test]
    fn an_edge_deployment_name_belongs_to_one_project() {
        let mut st = EdgeState::default();
        let signed = |project: &str| EdgeDeployment {
            project: project.into(),
            model: "m".into(),
            signature: vec![0; 64],
            sample_input: vec![1.0],
            sample_output: vec![1.0],
            ..dep("d", &[("fleet", "cams")], 0)
        };
        st.edge_deploy(&signed(""), 1, &mut Dirty::default()).unwrap();
        st.edge_deploy(&signed("default"), 2, &mut Dirty::default()).unwrap();
        let e = st.edge_deploy(&signed("other"), 3, &mut Dirty::default()).unwrap_err();
        assert_eq!(e.code, tonic::Code::AlreadyExists);
        assert!(e.message.contains("belongs to project default"), "{}", e.message);
        assert_eq!(st.deployments["d"].created_at_ms, 2, "nothing changed");
    }
}
