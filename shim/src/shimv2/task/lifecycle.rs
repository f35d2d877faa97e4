//! What each Task request does: create, start, delete, state, kill, exec, stats,
//! shutdown.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use containerd_shim::DeleteResponse;
use containerd_shim::protos::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, StartRequest, StateRequest,
    StateResponse, StatsResponse,
};
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use tracing::{info, instrument, warn};

use crate::error::ErrorKind;
use crate::pod::{ProcessKey, Rootfs};
use crate::shimv2::events::{TaskEvent, timestamp};
use crate::shimv2::state::{Proc, Status, StdioStrings};
use crate::shimv2::{ShimError, rootfs};

use super::*;

impl Service {
    #[instrument(skip_all, fields(cid = %req.id))]
    pub(super) async fn do_create(&self, req: &CreateTaskRequest) -> Res<u32> {
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Kind(
                ErrorKind::Unimplemented,
                "checkpoint/restore is not supported".into(),
            ));
        }
        // A second Create of a live id is refused before anything of the first is touched.
        if self.table().get(&ProcessKey::new(&req.id, "")).is_ok()
            || self.containers().contains_key(&req.id)
        {
            return Err(crate::shimv2::state::StateError::Exists(req.id.clone()).into());
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = crate::shimv2::read_spec(&bundle)?;
        crate::shimv2::podnet::refuse_host_namespaces(&spec)?;
        let stdio = self.stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        let root = rootfs::host_root(&bundle, &spec)?;
        let mounted = rootfs::mount_all(&req.rootfs, &root).await?;
        let undo = |e: ShimError| {
            if mounted {
                rootfs::unmount(&root);
            }
            e
        };
        let plan = rootfs::plan(&spec, &root, &crate::shimv2::sanitize(&req.id));
        let pod = self.join(&req.id, &spec, &plan).await.map_err(undo)?;
        let mut guest_root = Rootfs::new();
        guest_root.path = plan.guest_root.clone();
        let mut guest_spec = plan.spec.clone();
        let sandbox_pid = *self
            .inner
            .sandbox_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sandbox_pid) = sandbox_pid {
            crate::shimv2::namespaces::to_guest(&mut guest_spec, self.vmm_pid(), sandbox_pid);
        }
        let created = pod
            .create_container(&req.id, &guest_spec, guest_root, "", &stdio)
            .await;
        let guest_pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                let mut slot = self.inner.sandbox.lock().await;
                if self.containers().is_empty() {
                    // The VM was booted for this container alone: it goes with it.
                    if let Some(sb) = slot.take() {
                        sb.shutdown().await;
                    }
                    self.detach_network();
                    self.inner.vm_gone.store(true, Ordering::SeqCst);
                } else if let Some(sb) = slot.as_ref() {
                    remove_exports(sb, &plan);
                }
                return Err(undo(e.into()));
            }
        };
        // The pod's first container is its sandbox: later ones join its namespaces.
        self.inner
            .sandbox_pid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(guest_pid);
        let pid = self.vmm_pid();
        let strings = StdioStrings {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.containers().insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                mounted_rootfs: mounted,
                plan,
            },
        );
        let mut t = self.table();
        t.add(
            ProcessKey::new(&req.id, ""),
            Proc::new(strings.clone(), None, pid),
        )?;
        self.inner.events.send(TaskEvent::Create {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            stdio: strings,
            pid,
        });
        Ok(pid)
    }

    #[instrument(skip_all, fields(cid = %req.id, exec = %req.exec_id))]
    pub(super) async fn do_start(&self, req: &StartRequest) -> Res<u32> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let pod = self.pod()?;
        let (stdio, process) = {
            let mut t = self.table();
            t.begin_start(&key)?;
            let p = t.get(&key)?;
            (p.stdio.clone(), p.process.clone())
        };
        let started = match &process {
            None => pod.start(&req.id).await.map(|_| ()),
            Some(process) => {
                match self.stdio(&stdio.stdin, &stdio.stdout, &stdio.stderr, stdio.terminal) {
                    Ok(s) => pod
                        .exec(&req.id, &req.exec_id, process, "", &s)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
        };
        let pid = self.vmm_pid();
        let mut t = self.table();
        let held = t.finish_start(&key, started.as_ref().ok().map(|_| pid));
        started?;
        self.inner.events.send(if key.is_init() {
            TaskEvent::Start {
                id: req.id.clone(),
                pid,
            }
        } else {
            TaskEvent::ExecStarted {
                id: req.id.clone(),
                exec: req.exec_id.clone(),
                pid,
            }
        });
        if let Some(exit) = held {
            self.inner.events.send(exit_event(&key, pid, exit));
        }
        Ok(pid)
    }

    #[instrument(skip_all, fields(cid = %req.id, exec = %req.exec_id))]
    pub(super) async fn do_delete(&self, req: &DeleteRequest) -> Res<DeleteResponse> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let (status, pid) = {
            let t = self.table();
            let p = t.get(&key)?;
            (p.status, p.pid)
        };
        if matches!(status, Status::Running | Status::Paused) {
            return Err(ShimError::Kind(
                ErrorKind::FailedPrecondition,
                format!("task {} is still running", req.id),
            ));
        }
        let pod = self.pod().ok();
        if let Some(pod) = &pod {
            pod.drain_io(&req.id, &req.exec_id).await;
        }
        if key.is_init() {
            if let Some(pod) = &pod
                && let Err(e) = pod.delete(&req.id, status == Status::Created).await
            {
                warn!(error = %e, "delete container in the guest");
            }
            let c = self.containers().remove(&req.id);
            if let Some(c) = c {
                if let Some(sb) = self.inner.sandbox.lock().await.as_ref() {
                    remove_exports(sb, &c.plan);
                }
                if c.mounted_rootfs {
                    rootfs::unmount(&c.bundle.join("rootfs"));
                }
            }
        }
        let p = {
            let mut t = self.table();
            let p = t.remove(&key)?;
            self.inner.events.send(TaskEvent::Delete {
                id: req.id.clone(),
                exec: req.exec_id.clone(),
                pid,
                status: p.exit.map(|e| e.status).unwrap_or(0),
                at: p.exit.map(|e| e.at),
            });
            p
        };
        let mut r = DeleteResponse::new();
        r.pid = pid;
        if let Some(e) = p.exit {
            r.exit_status = e.status;
            r.exited_at = Some(timestamp(e.at)).into();
        }
        Ok(r)
    }

    pub(super) fn do_state(&self, req: &StateRequest) -> Res<StateResponse> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let t = self.table();
        let p = t.get(&key)?;
        let mut r = StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = self
            .containers()
            .get(&req.id)
            .map(|c| c.bundle.display().to_string())
            .unwrap_or_default();
        r.pid = p.pid;
        r.status = match p.status {
            Status::Created => containerd_shim::protos::api::Status::CREATED,
            Status::Running => containerd_shim::protos::api::Status::RUNNING,
            Status::Paused => containerd_shim::protos::api::Status::PAUSED,
            Status::Stopped => containerd_shim::protos::api::Status::STOPPED,
        }
        .into();
        r.stdin = p.stdio.stdin.clone();
        r.stdout = p.stdio.stdout.clone();
        r.stderr = p.stdio.stderr.clone();
        r.terminal = p.stdio.terminal;
        if let Some(e) = p.exit {
            r.exit_status = e.status;
            r.exited_at = Some(timestamp(e.at)).into();
        }
        Ok(r)
    }

    pub(super) async fn do_kill(&self, req: &KillRequest) -> Res<()> {
        let key = ProcessKey::new(&req.id, &req.exec_id);
        let status = self.table().get(&key)?.status;
        if status == Status::Stopped {
            return Err(ShimError::Kind(
                ErrorKind::NotFound,
                "process already finished".into(),
            ));
        }
        self.pod()?
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(())
    }

    pub(super) async fn do_exec(&self, req: &ExecProcessRequest) -> Res<()> {
        let process: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| ShimError::Kind(ErrorKind::InvalidArgument, format!("exec spec: {e}")))?;
        // Parsed now so that a bad stdio string fails Exec, not Start.
        self.stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal)?;
        self.pod()?;
        let strings = StdioStrings {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut t = self.table();
        let init = t.get(&ProcessKey::new(&req.id, ""))?;
        if init.status == Status::Stopped {
            return Err(ShimError::Kind(
                ErrorKind::FailedPrecondition,
                format!("container {} is not running", req.id),
            ));
        }
        t.add(
            ProcessKey::new(&req.id, &req.exec_id),
            Proc::new(strings, Some(process), self.vmm_pid()),
        )?;
        self.inner.events.send(TaskEvent::ExecAdded {
            id: req.id.clone(),
            exec: req.exec_id.clone(),
        });
        Ok(())
    }

    pub(super) async fn do_stats(&self, id: &str) -> Res<StatsResponse> {
        self.table().get(&ProcessKey::new(id, ""))?;
        let s = self.pod()?.stats(id).await?;
        let mut m = v2::Metrics::new();
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = s.cpu_usage_ns / 1000;
        cpu.user_usec = s.cpu_user_ns / 1000;
        cpu.system_usec = s.cpu_system_ns / 1000;
        m.cpu = Some(cpu).into();
        let mut mem = v2::MemoryStat::new();
        mem.usage = s.memory_usage_bytes;
        mem.usage_limit = s.memory_limit_bytes;
        mem.max_usage = s.memory_max_usage_bytes;
        m.memory = Some(mem).into();
        let mut pids = v2::PidsStat::new();
        pids.current = s.pids_current;
        pids.limit = s.pids_limit;
        m.pids = Some(pids).into();
        let mut io = v2::IOEntry::new();
        io.rbytes = s.io_read_bytes;
        io.wbytes = s.io_write_bytes;
        let mut iostat = v2::IOStat::new();
        iostat.usage.push(io);
        m.io = Some(iostat).into();
        let mut ev = v2::MemoryEvents::new();
        ev.oom_kill = s.oom_kills;
        m.memory_events = Some(ev).into();
        let mut any = Any::new();
        any.type_url = METRICS_V2_TYPE.into();
        any.value = m
            .write_to_bytes()
            .map_err(|e| ShimError::Kind(ErrorKind::Internal, format!("metrics: {e}")))?;
        let mut r = StatsResponse::new();
        r.stats = Some(any).into();
        Ok(r)
    }

    pub(super) async fn do_shutdown(&self) -> Res<()> {
        if !self.table().is_empty() {
            info!("shutdown ignored: tasks remain");
            return Ok(());
        }
        // Every container was deleted: nothing in the guest needs a graceful end, and
        // containerd gives Shutdown only a few seconds.
        if let Some(mut sb) = self.inner.sandbox.lock().await.take() {
            sb.kill();
            info!("the pod's VM stopped");
        }
        self.detach_network();
        // The last TaskExit and TaskDelete reach containerd before the shim exits.
        self.inner
            .events
            .flushed(std::time::Duration::from_secs(2))
            .await;
        self.inner.exit.signal();
        Ok(())
    }
}
