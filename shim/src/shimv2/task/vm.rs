//! The pod's VM: the first container boots it (its size, jail and network), later ones
//! join it; the pod's events become the task events.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::error::Error;
use crate::pod::{Pod, PodEvent, ProcessKey};
use crate::sandbox::{Sandbox, SandboxSpec};
use crate::shimv2::events::TaskEvent;
use crate::shimv2::state::{ExitInfo, OnExit};
use crate::shimv2::{resources, rootfs};

use super::*;

impl Service {
    /// The pod for container `id` of `spec`, with the container's root and binds
    /// added to its share: the first container boots the pod's VM (sized by its
    /// annotations, crate::shimv2::resources), later ones join it.
    pub(super) async fn join(
        &self,
        id: &str,
        spec: &serde_json::Value,
        plan: &rootfs::Plan,
    ) -> Res<Pod> {
        let mut slot = self.inner.sandbox.lock().await;
        if self.inner.vm_gone.load(Ordering::SeqCst) {
            // One VM per shim: once it stopped, containerd's Deletes and Shutdown end
            // the shim; a new container gets a new shim.
            return Err(unavailable("the pod's VM stopped"));
        }
        if slot.is_none() {
            *slot = Some(self.boot(id, spec).await?);
        }
        let Some(sb) = slot.as_ref() else {
            return Err(unavailable("the pod's VM stopped"));
        };
        let share = sb
            .share()
            .ok_or_else(|| unavailable("the pod has no share"))?;
        for e in plan.share_exports() {
            if let Err(e) = share.add(&e) {
                // The folder is this container's alone (its id is new in this pod).
                remove_exports(sb, plan);
                return Err(Error::from(crate::sandbox::SandboxError::from(e)).into());
            }
        }
        self.pod()
    }

    /// Boots the pod's VM for its first container, `id` of `spec`.
    pub(super) async fn boot(&self, id: &str, spec: &serde_json::Value) -> Res<Sandbox> {
        let config = crate::shimv2::load_config()?;
        let size = resources::vm_size(
            spec,
            resources::VmSize {
                vcpus: config.vm.vcpus,
                memory_mib: config.vm.memory_mib,
            },
        )?;
        let guest =
            crate::guest::GuestImage::locate(&config.state_dir, config.vm.kernel.as_deref())
                .map_err(Error::from)?;
        let vmm = crate::guest::vmm_binary().map_err(Error::from)?;
        let dir = crate::shimv2::sandbox_dir(&config, &self.inner.namespace, id);
        let hostname = spec
            .get("hostname")
            .and_then(serde_json::Value::as_str)
            .filter(|h| !h.is_empty())
            .unwrap_or("husk");
        // husk-vmm's jail (crate::jail), unless the configuration turns it off.
        if config.vm.jail {
            crate::jail::cgroup::check().map_err(Error::from)?;
        }
        // The pod's network: the namespace its first container names, joined to a tap.
        let mut net = match crate::shimv2::podnet::netns_path(spec) {
            Some(p) => Some(crate::network::pod::attach(&p).map_err(Error::from)?),
            None => None,
        };
        let nics = net
            .iter()
            .map(|n| crate::sandbox::Nic {
                fd: n.tap_fd(),
                mac: n.guest.mac.clone(),
                mtu: n.guest.mtu,
            })
            .collect();
        let sb_spec = SandboxSpec {
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            pod_share: true,
            nics,
            jail: config.vm.jail.then(|| crate::jail::JailSpec {
                settings: config.jail.clone(),
                run_dir: config.run_dir.clone(),
            }),
            hostname: hostname.to_string(),
            ..SandboxSpec::new(id, dir, vmm, &guest)
        };
        // From the template of the pod's shape (built by the first pod of that shape),
        // unless the configuration turns templates off (docs/snapshots.md).
        let template = if config.vm.templates {
            let progress = |m: &str| info!(cid = %id, "{m}");
            crate::template::ensure(&config.state_dir, &config.run_dir, &sb_spec, &progress).await
        } else {
            None
        };
        let sb_spec = SandboxSpec {
            template,
            ..sb_spec
        };
        info!(cid = %id, vcpus = size.vcpus, memory_mib = size.memory_mib, restore = sb_spec.template.is_some(), "starting the pod's VM");
        let mut sb = match Sandbox::boot(&sb_spec).await {
            Ok(sb) => sb,
            Err(e) => {
                if let Some(n) = net {
                    n.detach();
                }
                return Err(Error::from(e).into());
            }
        };
        let mut configured = match &net {
            Some(n) => sb.configure_network(&n.guest).await,
            None => Ok(()),
        };
        // As `husk run` does: a clone that cannot take its network is not used
        // half-way (no container has started); the template is discarded and the VM
        // boots.
        if let (Err(e), Some(template), Some(n)) = (&configured, &sb_spec.template, &net)
            && sb.times.restored
        {
            warn!(cid = %id, error = %e, "the pod's VM restored from its template could not take its network; booting");
            crate::template::discard(template);
            sb.shutdown().await;
            let boot = SandboxSpec {
                template: None,
                ..sb_spec.clone()
            };
            sb = match Sandbox::boot(&boot).await {
                Ok(sb) => sb,
                Err(e) => {
                    if let Some(n) = net {
                        n.detach();
                    }
                    return Err(Error::from(e).into());
                }
            };
            configured = sb.configure_network(&n.guest).await;
        }
        if let Err(e) = configured {
            let mut sb = sb;
            sb.kill();
            if let Some(n) = net {
                n.detach();
            }
            return Err(Error::from(e).into());
        }
        // Kubernetes' port-forward (localhost in the pod's namespace) into the VM, for
        // a CRI sandbox or a spec that asks (crate::shimv2::podnet::wants_port_forward:
        // the redirect takes every local connection to 127.0.0.1 in the namespace, so
        // never for a namespace others may share unasked); a host that cannot have it
        // logs why and the pod runs without it.
        if let Some(n) = net.as_mut()
            && crate::shimv2::podnet::wants_port_forward(spec)
        {
            n.start_port_forward(crate::network::portfwd::agent_opener(sb.endpoint.clone()));
        }
        *self
            .inner
            .pod_network
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = net;
        let pod = Pod::of(&sb);
        *self.inner.vmm_pid.lock().unwrap_or_else(|p| p.into_inner()) = sb.vmm_pid().unwrap_or(0);
        let rx = pod.events();
        tokio::spawn(self.clone().on_pod_events(rx));
        *self.inner.pod.lock().unwrap_or_else(|p| p.into_inner()) = Some(pod);
        Ok(sb)
    }

    /// The pod's exits and OOM kills, turned into TaskExit and TaskOOM in order; when
    /// the channel closes the VM is gone and every process left is stopped (255).
    pub(super) async fn on_pod_events(self, mut rx: mpsc::UnboundedReceiver<PodEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                PodEvent::Exit {
                    process,
                    status,
                    at,
                    ..
                } => self.exited(&process, status_u32(status), at),
                PodEvent::Oom { container } => {
                    self.inner.events.send(TaskEvent::Oom { id: container });
                }
            }
        }
        self.inner.vm_gone.store(true, Ordering::SeqCst);
        let mut live = self.table().live();
        // Every exec's exit before its container's init's.
        live.sort_by_key(|k| k.is_init());
        for key in live {
            self.exited(
                &key,
                status_u32(crate::pod::events::VM_DIED_STATUS),
                SystemTime::now(),
            );
        }
        warn!("the pod's VM stopped");
    }

    /// Records an exit and queues its event (under the table's lock: ordered).
    pub(super) fn exited(&self, key: &ProcessKey, status: u32, at: SystemTime) {
        let mut t = self.table();
        let exit = ExitInfo { status, at };
        if t.on_exit(key, exit) == OnExit::Publish {
            let pid = t.get(key).map(|p| p.pid).unwrap_or(0);
            self.inner.events.send(exit_event(key, pid, exit));
        }
    }
}
