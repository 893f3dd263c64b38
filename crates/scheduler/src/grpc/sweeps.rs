use std::sync::Arc;

use aidos_api::sweep_service_server::SweepService;
use aidos_api::v1::*;
use tonic::Request;

use super::{Res, leader, ok};
use crate::core::Core;
use crate::queries;

pub struct Sweeps(pub Arc<Core>);

#[tonic::async_trait]
impl SweepService for Sweeps {
    async fn submit(&self, r: Request<SubmitSweepRequest>) -> Res<Sweep> {
        ok(leader(&self.0)?.submit_sweep(r.into_inner()).await?)
    }

    async fn get(&self, r: Request<GetSweepRequest>) -> Res<Sweep> {
        ok(leader(&self.0)?.read(|st| queries::sweep(st, &r.get_ref().sweep_id))?)
    }

    async fn list(&self, _: Request<ListSweepsRequest>) -> Res<ListSweepsResponse> {
        ok(leader(&self.0)?.read(queries::list_sweeps))
    }

    async fn cancel(&self, r: Request<CancelSweepRequest>) -> Res<Sweep> {
        ok(leader(&self.0)?.cancel_sweep(&r.get_ref().sweep_id).await?)
    }
}
