//! The ttrpc service: each RPC checks its request and calls into the container
//! runtime ([`crate::container`]) or the guest ([`guest_details`], [`sandbox`],
//! [`network`]).
//! Errors become ttrpc statuses with a message that names the field or the object.

mod guest_details;
mod network;
mod sandbox;

use std::sync::Arc;

use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::Agent;
use husk_agent_protocol::validate;
use ttrpc::r#async::TtrpcContext;

use crate::container::{Runtime, RuntimeError, StdioRequest, rootfs};

pub use guest_details::details as guest_details_now;
pub use sandbox::Shutdown;

/// The agent service.
#[derive(Debug, Clone)]
pub struct Service {
    pub rt: Arc<Runtime>,
    pub shutdown: Shutdown,
    /// Running as the guest's PID 1 (may set the clock, powers off on DestroySandbox).
    pub pid1: bool,
}

fn status(code: ttrpc::Code, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn map_err(e: RuntimeError) -> ttrpc::Error {
    let code = match &e {
        RuntimeError::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
        RuntimeError::NotFound(_) => ttrpc::Code::NOT_FOUND,
        RuntimeError::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
        RuntimeError::State(_) => ttrpc::Code::FAILED_PRECONDITION,
        RuntimeError::Internal(_) => ttrpc::Code::INTERNAL,
    };
    tracing::warn!(error = %e, "request failed");
    status(code, e.to_string())
}

fn invalid(e: validate::ValidateError) -> ttrpc::Error {
    map_err(RuntimeError::from(e))
}

fn stdio(s: &protobuf::MessageField<Stdio>) -> StdioRequest {
    s.as_ref()
        .map(|s| StdioRequest {
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
        })
        .unwrap_or_default()
}

fn exec_id(e: &str) -> Result<(), ttrpc::Error> {
    if e.is_empty() {
        Ok(())
    } else {
        validate::id("exec_id", e).map_err(invalid)
    }
}

type R<T> = ttrpc::Result<T>;

#[async_trait::async_trait]
impl Agent for Service {
    async fn guest_details(
        &self,
        _: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> R<GuestDetailsResponse> {
        guest_details::handle(&req)
    }

    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> R<Empty> {
        sandbox::create(self, &req)
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> R<Empty> {
        sandbox::destroy(self).await
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> R<CreateContainerResponse> {
        let r = req.rootfs.as_ref().cloned().unwrap_or_default();
        let source = rootfs::Source::from_request(&r.path, &r.block_device, &r.fstype)
            .map_err(|e| map_err(e.into()))?;
        let upper = rootfs::Upper::from_request(r.overlay, &r.upper_device, &r.upper_fstype)
            .map_err(|e| map_err(e.into()))?;
        let pid = self
            .rt
            .create(
                &req.container_id,
                &req.spec_json,
                &source,
                upper.as_ref(),
                &stdio(&req.stdio),
                &req.user,
            )
            .await
            .map_err(map_err)?;
        let mut resp = CreateContainerResponse::new();
        resp.pid = u32::try_from(pid).unwrap_or(0);
        Ok(resp)
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> R<StartContainerResponse> {
        let pid = self.rt.start(&req.container_id).await.map_err(map_err)?;
        let mut resp = StartContainerResponse::new();
        resp.pid = u32::try_from(pid).unwrap_or(0);
        Ok(resp)
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> R<ExecProcessResponse> {
        let pid = self
            .rt
            .exec(
                &req.container_id,
                &req.exec_id,
                &req.process_json,
                &stdio(&req.stdio),
                &req.user,
            )
            .await
            .map_err(map_err)?;
        let mut resp = ExecProcessResponse::new();
        resp.pid = u32::try_from(pid).unwrap_or(0);
        Ok(resp)
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        exec_id(&req.exec_id)?;
        self.rt
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .map_err(map_err)?;
        Ok(Empty::new())
    }

    async fn wait_process(&self, _: &TtrpcContext, req: ProcessRequest) -> R<WaitProcessResponse> {
        exec_id(&req.exec_id)?;
        let c = self.rt.container(&req.container_id).map_err(map_err)?;
        let p = c.process(&req.exec_id).map_err(map_err)?;
        let e = p
            .wait()
            .await
            .ok_or_else(|| status(ttrpc::Code::INTERNAL, "the process's exit was lost".into()))?;
        let mut resp = WaitProcessResponse::new();
        resp.exit_status = e.status;
        resp.oom_killed = e.oom_killed;
        resp.exited_at_unix_ns = e.at_unix_ns;
        c.forget_exec(&req.exec_id);
        Ok(resp)
    }

    async fn delete_container(&self, _: &TtrpcContext, req: DeleteContainerRequest) -> R<Empty> {
        self.rt
            .delete(&req.container_id, req.force)
            .await
            .map_err(map_err)?;
        Ok(Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> R<StatsContainerResponse> {
        self.rt.container(&req.container_id).map_err(map_err)?;
        crate::container::cgroup::stats(&req.container_id)
            .map_err(|e| map_err(RuntimeError::Internal(e)))
    }

    async fn pause_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.rt.pause(&req.container_id).await.map_err(map_err)?;
        Ok(Empty::new())
    }

    async fn resume_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.rt.resume(&req.container_id).await.map_err(map_err)?;
        Ok(Empty::new())
    }

    async fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> R<Empty> {
        self.rt.container(&req.container_id).map_err(map_err)?;
        validate::size(
            "resources_json",
            req.resources_json.len(),
            crate::container::MAX_SPEC_BYTES,
        )
        .map_err(invalid)?;
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources_json)
            .map_err(|e| map_err(RuntimeError::Invalid(format!("resources_json: {e}"))))?;
        crate::container::cgroup::update(&req.container_id, &res)
            .map_err(|e| map_err(RuntimeError::Internal(e)))?;
        Ok(Empty::new())
    }

    async fn list_pids(&self, _: &TtrpcContext, req: ContainerRequest) -> R<ListPidsResponse> {
        self.rt.container(&req.container_id).map_err(map_err)?;
        let mut resp = ListPidsResponse::new();
        resp.pids = crate::container::cgroup::pids(&req.container_id)
            .map_err(|e| map_err(RuntimeError::Internal(e)))?;
        Ok(resp)
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> R<Empty> {
        exec_id(&req.exec_id)?;
        let (rows, cols) = match (u16::try_from(req.rows), u16::try_from(req.cols)) {
            (Ok(r), Ok(c)) => (r, c),
            _ => {
                return Err(map_err(RuntimeError::Invalid(
                    "rows/cols: at most 65535".into(),
                )));
            }
        };
        let c = self.rt.container(&req.container_id).map_err(map_err)?;
        let p = c.process(&req.exec_id).map_err(map_err)?;
        p.io.resize(rows, cols).map_err(|e| {
            map_err(RuntimeError::State(format!(
                "resize {}: {e}",
                req.container_id
            )))
        })?;
        Ok(Empty::new())
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> R<Empty> {
        exec_id(&req.exec_id)?;
        let c = self.rt.container(&req.container_id).map_err(map_err)?;
        c.process(&req.exec_id).map_err(map_err)?.io.close_stdin();
        Ok(Empty::new())
    }

    async fn update_interface(&self, _: &TtrpcContext, req: UpdateInterfaceRequest) -> R<Empty> {
        network::update_interface(&req).await
    }

    async fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> R<Empty> {
        network::update_routes(&req).await
    }

    async fn next_event(&self, _: &TtrpcContext, _: Empty) -> R<Event> {
        Ok(self.rt.events.next().await)
    }
}
