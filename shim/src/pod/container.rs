//! A pod's containers as wholes: statistics, pause and resume (the cgroup freezer),
//! resource updates, the processes in them.

use husk_agent_protocol::agent::{
    ContainerRequest, StatsContainerResponse, UpdateContainerRequest,
};
use tracing::info;

use super::{Pod, ctx};
use crate::error::Error;

/// How long these calls may take.
const CALL_SECS: i64 = 60;

/// A container's statistics (its cgroup's in the guest).
pub type Stats = StatsContainerResponse;

fn req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.into();
    r
}

impl Pod {
    /// Container `id`'s cgroup statistics: CPU, memory, pids, I/O, OOM kills.
    pub async fn stats(&self, id: &str) -> Result<Stats, Error> {
        self.agent
            .stats_container(ctx(CALL_SECS), &req(id))
            .await
            .map_err(Error::agent)
    }

    /// Freezes every process of container `id`.
    pub async fn pause(&self, id: &str) -> Result<(), Error> {
        self.agent
            .pause_container(ctx(CALL_SECS), &req(id))
            .await
            .map_err(Error::agent)?;
        info!(cid = %id, "container paused");
        Ok(())
    }

    /// Thaws container `id`.
    pub async fn resume(&self, id: &str) -> Result<(), Error> {
        self.agent
            .resume_container(ctx(CALL_SECS), &req(id))
            .await
            .map_err(Error::agent)?;
        info!(cid = %id, "container resumed");
        Ok(())
    }

    /// Applies `resources` (the OCI `linux.resources` object, JSON) to container `id`.
    pub async fn update(&self, id: &str, resources: &serde_json::Value) -> Result<(), Error> {
        let mut r = UpdateContainerRequest::new();
        r.container_id = id.into();
        r.resources_json = resources.to_string().into_bytes();
        self.agent
            .update_container(ctx(CALL_SECS), &r)
            .await
            .map_err(Error::agent)?;
        Ok(())
    }

    /// The pids (in the guest) of container `id`'s processes.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>, Error> {
        Ok(self
            .agent
            .list_pids(ctx(CALL_SECS), &req(id))
            .await
            .map_err(Error::agent)?
            .pids)
    }
}
