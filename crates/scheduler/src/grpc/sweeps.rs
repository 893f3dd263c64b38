use std::sync::Arc;

use aidos_api::sweep_service_server::SweepService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, leader, ok, project};
use crate::core::Core;
use crate::queries;

pub struct Sweeps(pub Arc<Core>);

#[tonic::async_trait]
impl SweepService for Sweeps {
    async fn submit(&self, r: Request<SubmitSweepRequest>) -> Res<Sweep> {
        super::may_run(&r, r.get_ref().spec.as_ref().and_then(|s| s.trial.as_ref()))?;
        let project = project(&r)?;
        let mut req = r.into_inner();
        // Trials are jobs of the sweep's project: the template carries it.
        if let Some(t) = req.spec.as_mut().and_then(|s| s.trial.as_mut()) {
            t.project = project;
        }
        ok(leader(&self.0)?.submit_sweep(req).await?)
    }

    async fn get(&self, r: Request<GetSweepRequest>) -> Res<Sweep> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::sweep_in(st, &r.get_ref().sweep_id, &project))?)
    }

    async fn list(&self, r: Request<ListSweepsRequest>) -> Res<ListSweepsResponse> {
        let project = project(&r)?;
        ok(leader(&self.0)?.read(|st| queries::list_sweeps(st, &project)))
    }

    async fn cancel(&self, r: Request<CancelSweepRequest>) -> Res<Sweep> {
        let l = leader(&self.0)?;
        let project = project(&r)?;
        l.read(|st| queries::sweep_in(st, &r.get_ref().sweep_id, &project))?;
        ok(l.cancel_sweep(&r.get_ref().sweep_id).await?)
    }
}
