//! The ttrpc face of the Task service: each request to its `do_*` (lifecycle, vm) and
//! its answer.

use async_trait::async_trait;
use containerd_shim::protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse,
    StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc;
use containerd_shim::{DeleteResponse, TtrpcResult};

use crate::error::ErrorKind;
use crate::pod::ProcessKey;
use crate::shimv2::ShimError;
use crate::shimv2::events::{TaskEvent, timestamp};
use crate::shimv2::state::Status;

use super::*;

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StateRequest,
    ) -> TtrpcResult<StateResponse> {
        res(self.do_state(&req))
    }

    async fn create(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let pid = res(self.do_create(&req).await)?;
        let mut r = CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn start(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StartRequest,
    ) -> TtrpcResult<StartResponse> {
        let pid = res(self.do_start(&req).await)?;
        let mut r = StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn delete(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        res(self.do_delete(&req).await)
    }

    async fn pids(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: PidsRequest,
    ) -> TtrpcResult<PidsResponse> {
        let r: Res<PidsResponse> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            let pids = self.pod()?.pids(&req.id).await?;
            let mut r = PidsResponse::new();
            r.processes = pids
                .into_iter()
                .map(|pid| {
                    let mut p = ProcessInfo::new();
                    p.pid = pid;
                    p
                })
                .collect();
            Ok(r)
        }
        .await;
        res(r)
    }

    async fn pause(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: PauseRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            self.pod()?.pause(&req.id).await?;
            let mut t = self.table();
            if let Ok(p) = t.get_mut(&ProcessKey::new(&req.id, ""))
                && p.status == Status::Running
            {
                p.status = Status::Paused;
            }
            self.inner
                .events
                .send(TaskEvent::Paused { id: req.id.clone() });
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn resume(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ResumeRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            self.pod()?.resume(&req.id).await?;
            let mut t = self.table();
            if let Ok(p) = t.get_mut(&ProcessKey::new(&req.id, ""))
                && p.status == Status::Paused
            {
                p.status = Status::Running;
            }
            self.inner
                .events
                .send(TaskEvent::Resumed { id: req.id.clone() });
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn kill(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: KillRequest,
    ) -> TtrpcResult<Empty> {
        res(self.do_kill(&req).await).map(|()| Empty::new())
    }

    async fn exec(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ExecProcessRequest,
    ) -> TtrpcResult<Empty> {
        res(self.do_exec(&req).await).map(|()| Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, &req.exec_id))?;
            self.pod()?
                .resize_pty(&req.id, &req.exec_id, req.height, req.width)
                .await?;
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: CloseIORequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, &req.exec_id))?;
            if req.stdin {
                self.pod()?.close_stdin(&req.id, &req.exec_id).await?;
            }
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn update(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: UpdateTaskRequest,
    ) -> TtrpcResult<Empty> {
        let r: Res<()> = async {
            self.table().get(&ProcessKey::new(&req.id, ""))?;
            let resources: serde_json::Value = serde_json::from_slice(&req.resources.value)
                .map_err(|e| {
                    ShimError::Kind(ErrorKind::InvalidArgument, format!("resources: {e}"))
                })?;
            self.pod()?.update(&req.id, &resources).await?;
            Ok(())
        }
        .await;
        res(r).map(|()| Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: WaitRequest,
    ) -> TtrpcResult<WaitResponse> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let mut rx = res(self.table().exit_watch(&key).map_err(ShimError::from))?;
        let exit = match rx.wait_for(Option::is_some).await {
            Ok(e) => *e,
            Err(_) => None,
        };
        let Some(exit) = exit else {
            return res(Err(ShimError::Kind(
                ErrorKind::NotFound,
                format!("task {} was deleted while waited for", req.id),
            )));
        };
        let mut r = WaitResponse::new();
        r.exit_status = exit.status;
        r.exited_at = Some(timestamp(exit.at)).into();
        Ok(r)
    }

    async fn stats(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StatsRequest,
    ) -> TtrpcResult<StatsResponse> {
        res(self.do_stats(&req.id).await)
    }

    async fn connect(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let mut r = ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.vmm_pid();
        r.version = env!("CARGO_PKG_VERSION").into();
        Ok(r)
    }

    async fn shutdown(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        res(self.do_shutdown().await).map(|()| Empty::new())
    }
}
