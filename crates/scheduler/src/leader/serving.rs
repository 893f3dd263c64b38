//! The leader path for deployments: requests are validated and resolved (an alias becomes the version it names
//! now, so a later alias move does not silently change a running deployment) before anything is proposed.

use aidos_api::v1::command_v1::Command;
use aidos_api::v1::*;

use super::LeaderHandler;
use crate::error::SchedulerError;
use crate::queries;
use crate::reconcile::default_resources;
use crate::state::serving::MAX_DEPLOYMENT_REPLICAS;

/// Runtimes a replica can use.
pub const RUNTIMES: [&str; 3] = ["tract", "ort", "burn"];
/// Largest accepted batch and queue, per replica.
const MAX_BATCH: u32 = 4096;
const MAX_QUEUE: u32 = 1 << 20;
const MAX_INSTANCES: u32 = 64;

fn invalid(field: &str, why: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::InvalidArgument(format!("{field}: {why}"))
}

impl LeaderHandler {
    /// Creates or changes deployment `r.name` of `project`. A name is the cluster's (gateways route by it): one
    /// taken by another project is refused.
    pub async fn deploy(&self, r: DeployRequest, project: &str) -> Result<Deployment, SchedulerError> {
        if r.model.trim().is_empty() {
            return Err(invalid("model", "empty (expected NAME, NAME:VERSION or NAME@ALIAS)"));
        }
        let model_ref = aidos_api::parse_model_ref(&r.model).map_err(|e| invalid("model", e))?;
        let resolved = self.read(|st| queries::get_model(st, &model_ref, project))?;
        let format = serde_json::from_str::<serde_json::Value>(&resolved.config)
            .ok()
            .and_then(|c| c["format"].as_str().map(str::to_string));
        if format.as_deref() == Some(crate::mlflow::MLFLOW_FORMAT) {
            return Err(invalid(
                "model",
                format!(
                    "{}:{} was registered through the MLflow API (its files are kept, not a model aidos can run); \
                     aidos serves the models it trains and their ONNX exports",
                    resolved.name, resolved.version
                ),
            ));
        }
        let runtime = if r.runtime.is_empty() { "tract".to_string() } else { r.runtime.clone() };
        if !RUNTIMES.contains(&runtime.as_str()) {
            return Err(invalid("runtime", format!("`{runtime}` (expected one of {})", RUNTIMES.join(", "))));
        }
        let replicas = r.replicas.max(1);
        if replicas > MAX_DEPLOYMENT_REPLICAS {
            return Err(invalid("replicas", format!("{replicas}, at most {MAX_DEPLOYMENT_REPLICAS}")));
        }
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        let spec = ServeSpec {
            deployment: String::new(),
            model: resolved.name.clone(),
            version: resolved.version,
            runtime,
            max_batch: or(r.max_batch, 32),
            max_delay_us: if r.max_delay_us == 0 { 500 } else { r.max_delay_us },
            instances: or(r.instances, 1),
            max_queue: or(r.max_queue, 1024),
            generation: 0,
        };
        if spec.max_batch > MAX_BATCH {
            return Err(invalid("max_batch", format!("{}, at most {MAX_BATCH}", spec.max_batch)));
        }
        if spec.max_queue > MAX_QUEUE {
            return Err(invalid("max_queue", format!("{}, at most {MAX_QUEUE}", spec.max_queue)));
        }
        if spec.instances > MAX_INSTANCES {
            return Err(invalid("instances", format!("{}, at most {MAX_INSTANCES}", spec.instances)));
        }
        if spec.max_delay_us > 10_000_000 {
            return Err(invalid("max_delay_us", format!("{} µs, at most 10 s", spec.max_delay_us)));
        }
        let resources = r.resources.unwrap_or_else(default_resources);
        if resources.cpu_millis == 0 && resources.memory_bytes == 0 {
            return Err(invalid("resources", "asks for nothing: set cpu or memory"));
        }
        let name = if r.name.is_empty() { resolved.name.clone() } else { r.name.clone() };
        let owner =
            self.read(|st| st.serving.deployments.get(&name).map(|d| queries::deployment_project(d).to_string()));
        if owner.as_ref().is_some_and(|o| o != project) {
            return Err(invalid(
                "name",
                format!("deployment {name} exists in another project (names are cluster-wide)"),
            ));
        }
        if r.canary_percent > 0 {
            self.read(|st| queries::deployment_in(st, &name, project))?;
            if r.canary_percent > 99 {
                return Err(invalid("canary_percent", format!("{} (expected 1..=99)", r.canary_percent)));
            }
            let canary = Canary {
                spec: Some(spec),
                replicas,
                percent: r.canary_percent,
                requested: r.model.trim().to_string(),
                resources: Some(resources),
            };
            return self.set_canary(SetCanaryV1 { name, canary: Some(canary), promote: false }).await;
        }
        let autoscale = if r.max_replicas > 0 {
            let min = r.min_replicas.max(1);
            if r.max_replicas < min || r.max_replicas > MAX_DEPLOYMENT_REPLICAS {
                return Err(invalid(
                    "max_replicas",
                    format!("{} (expected min_replicas {min}..={MAX_DEPLOYMENT_REPLICAS})", r.max_replicas),
                ));
            }
            if !r.target_in_flight.is_finite() || r.target_in_flight < 0.0 {
                return Err(invalid("target_in_flight", format!("{} (expected a number > 0)", r.target_in_flight)));
            }
            Some(Autoscale {
                min_replicas: min,
                max_replicas: r.max_replicas,
                target_in_flight: if r.target_in_flight > 0.0 {
                    r.target_in_flight
                } else {
                    crate::autoscale::DEFAULT_TARGET_IN_FLIGHT
                },
                scale_down_delay_secs: if r.scale_down_delay_secs > 0 {
                    r.scale_down_delay_secs
                } else {
                    crate::autoscale::DEFAULT_SCALE_DOWN_DELAY_SECS
                },
            })
        } else if r.min_replicas > 0 || r.target_in_flight > 0.0 {
            return Err(invalid("max_replicas", "missing: autoscaling needs --max-replicas"));
        } else {
            None
        };
        // Autoscaled: start at the count asked for (or the one the autoscaler reached), within the bounds.
        let replicas = match &autoscale {
            Some(a) => {
                let now = self
                    .read(|st| st.serving.deployments.get(&name).filter(|d| d.autoscale.is_some()).map(|d| d.replicas));
                let (min, max) = crate::autoscale::bounds(a);
                now.unwrap_or(replicas).clamp(min, max)
            }
            None => replicas,
        };
        let d = Deployment {
            name,
            spec: Some(spec),
            replicas,
            autoscale,
            resources: Some(resources),
            requested: r.model.trim().to_string(),
            project: project.to_string(),
            public: r.public,
            ..Default::default()
        };
        let res = self.core.propose(Command::Deploy(DeployV1 { deployment: Some(d) })).await?;
        let d = res.deployment.ok_or_else(|| SchedulerError::Raft("deploy answered without a deployment".into()))?;
        Ok(self.read(|st| queries::deployment_view(st, &d.name)).unwrap_or(d))
    }

    /// Starts, promotes or rolls back a canary (see `SetCanaryV1`).
    pub async fn set_canary(&self, c: SetCanaryV1) -> Result<Deployment, SchedulerError> {
        let res = self.core.propose(Command::SetCanary(c)).await?;
        let d = res.deployment.ok_or_else(|| SchedulerError::Raft("canary answered without a deployment".into()))?;
        Ok(self.read(|st| queries::deployment_view(st, &d.name)).unwrap_or(d))
    }

    pub async fn delete_deployment(&self, r: DeleteDeploymentRequest) -> Result<Deployment, SchedulerError> {
        let res = self.core.propose(Command::DeleteDeployment(r)).await?;
        res.deployment.ok_or_else(|| SchedulerError::Raft("delete answered without a deployment".into()))
    }

    pub async fn report_endpoint(&self, r: ReportEndpointRequest) -> Result<(), SchedulerError> {
        self.core.propose(Command::ReportEndpoint(r)).await.map(|_| ())
    }
}
