//! Building a template: boot a VM of the sandbox's shape with placeholder disks (and
//! NICs on taps of its own network namespace, never up in the guest; the share served
//! by a throwaway virtiofsd of an empty folder, never mounted in the guest), wait
//! for its agent's readiness line (nothing else is sent to it: the guest holds no
//! container, no connection, no per-VM identity), snapshot it through husk-vmm's API,
//! stop it, and move the snapshot into place.
//!
//! The template VM runs without the jail: it runs no container and no tenant code, only
//! husk's own kernel and agent. VMs restored from it are jailed as usual.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use tokio::io::AsyncBufReadExt as _;

use super::{TemplateError, key, templates_dir};
use crate::layout::SandboxDir;
use crate::sandbox::{Disk, SandboxSpec, console_tail, describe_exit};

/// Placeholder disks are this big; a clone's own disks replace them.
const PLACEHOLDER_BYTES: u64 = 1 << 20;

/// Removes what a build made, whatever happened.
struct Cleanup {
    paths: Vec<PathBuf>,
    child: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.paths {
            let _ = std::fs::remove_dir_all(p);
            // The builds' parent folder, once empty (another build may be using it).
            if let Some(parent) = p.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

fn dir_err(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |err| TemplateError::Dir {
        path: path.to_path_buf(),
        err,
    }
}

/// Builds the template for `spec` and returns its folder.
pub async fn build(
    state_dir: &Path,
    run_dir: &Path,
    spec: &SandboxSpec,
) -> Result<PathBuf, TemplateError> {
    let started = Instant::now();
    let (id, key_json) = key(spec)?;
    let root = templates_dir(state_dir);
    std::fs::create_dir_all(&root).map_err(dir_err(&root))?;
    // Templates hold guest memory: root's only. Their two files are made readable for
    // the jailed husk-vmm's uid, which reaches them only through its jail's binds.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .map_err(dir_err(&root))?;
    remove_stale_builds(&root, run_dir);
    let tag = format!("{id}-{}", std::process::id());
    let work = root.join(format!(".build-{tag}"));
    let vm_dir = SandboxDir::new(run_dir.join("template-builds").join(&tag));
    let mut cleanup = Cleanup {
        paths: vec![work.clone(), vm_dir.path().to_path_buf()],
        child: None,
    };
    let _ = std::fs::remove_dir_all(&work);
    let snap = work.join("snapshot");
    std::fs::create_dir_all(&snap).map_err(dir_err(&snap))?;
    std::fs::create_dir_all(vm_dir.path()).map_err(dir_err(vm_dir.path()))?;
    let disks = spec
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let path = work.join(format!("placeholder{i}.img"));
            let f = std::fs::File::create(&path).map_err(dir_err(&path))?;
            f.set_len(PLACEHOLDER_BYTES).map_err(dir_err(&path))?;
            Ok(Disk {
                path,
                read_only: d.read_only,
            })
        })
        .collect::<Result<Vec<_>, TemplateError>>()?;
    // The template VM's NICs: the clone's shape, the template's own MACs, on taps
    // husk-vmm makes by name in a network namespace of its own (below), gone with it.
    let nics = spec
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| crate::sandbox::Nic {
            fd: -1,
            mac: super::nic_mac(i),
            mtu: n.mtu,
        })
        .collect();
    let bspec = SandboxSpec {
        dir: vm_dir.clone(),
        disks,
        nics,
        // The share's device, on the throwaway virtiofsd below.
        exports: Vec::new(),
        pod_share: spec.has_share(),
        name_files: None,
        jail: None,
        template: None,
        ..spec.clone()
    };
    let vm_json = vm_dir.vm_config();
    let mut vm_config = bspec.vm_config();
    for (i, n) in vm_config.net.iter_mut().enumerate() {
        n.fd = None;
        n.tap = Some(format!("tpl{i}"));
    }
    let with_nics = !vm_config.net.is_empty();
    let config = serde_json::to_vec_pretty(&vm_config)
        .map_err(|e| dir_err(&vm_json)(std::io::Error::other(e)))?;
    std::fs::write(&vm_json, config).map_err(dir_err(&vm_json))?;
    let ready_path = vm_dir.ready_socket();
    let ready = tokio::net::UnixListener::bind(&ready_path).map_err(dir_err(&ready_path))?;
    // A throwaway virtiofsd for the share's device (an empty folder in a mount namespace
    // of its own): husk-vmm connects to it and the guest probes the device; nothing is
    // mounted, so it never hears a request. Stopped when the build ends.
    let _share = if bspec.has_share() {
        let server = crate::share::Server::start(vm_dir.path(), &[]).await;
        Some(server.map_err(|e| TemplateError::Build(format!("the template's virtiofsd: {e}")))?)
    } else {
        None
    };
    let api = vm_dir.path().join("api.sock");
    let log = std::fs::File::create(vm_dir.vmm_log()).map_err(dir_err(vm_dir.path()))?;
    let mut cmd = Command::new(&spec.vmm);
    cmd.arg("--config")
        .arg(&vm_json)
        .arg("--api-sock")
        .arg(&api)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // SAFETY: prctl and unshare in the forked child before exec; async-signal-safe,
    // touch no memory shared with the parent (`with_nics` is a copied bool).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A network namespace of its own for its taps: nothing appears on the
            // host's, and they go when husk-vmm does. The guest never sees traffic.
            if with_nics && libc::unshare(libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = crate::spawner::spawn(cmd)
        .map_err(|e| TemplateError::Build(format!("start {}: {e}", spec.vmm.display())))?;
    let child = cleanup.child.insert(child);

    // The agent's readiness line, or the VM's end.
    let deadline = tokio::time::Instant::now() + spec.ready_timeout;
    let conn = loop {
        tokio::select! {
            r = ready.accept() => break r.map_err(dir_err(&ready_path))?.0,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Ok(Some(st)) = child.try_wait() {
                    return Err(TemplateError::Build(format!(
                        "the template VM stopped before its agent was ready: {}{}",
                        describe_exit(st),
                        console_tail(vm_dir.path())
                    )));
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(TemplateError::Build(format!(
                        "the template VM's agent was not ready within {:?}{}",
                        spec.ready_timeout,
                        console_tail(vm_dir.path())
                    )));
                }
            }
        }
    };
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(conn, 4096));
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
    drop(r);
    let ready_json: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| TemplateError::Build(format!("the agent's readiness line {line:?}: {e}")))?;
    // An agent before protocol 0.5 would drop the clones' entropy seeds; before 0.6,
    // their NICs would keep the template's MAC.
    let minor = ready_json["protocol"][1].as_u64().unwrap_or(0);
    let need = super::min_agent_minor(spec);
    if minor < u64::from(need) {
        return Err(TemplateError::AgentTooOld { have: minor, need });
    }
    let booted = started.elapsed();

    // Snapshot, then stop the template VM.
    let (api2, snap2) = (api.clone(), snap.clone());
    let taken = tokio::task::spawn_blocking(move || husk_vmm::api::snapshot(&api2, &snap2))
        .await
        .map_err(|e| TemplateError::Build(e.to_string()))?
        .map_err(|e| {
            TemplateError::Build(format!("snapshot: {}", husk_vmm::api::error_chain(&e)))
        })?;
    let api3 = api.clone();
    let _ = tokio::task::spawn_blocking(move || {
        husk_vmm::api::call(&api3, husk_vmm::api::Request::Shutdown)
    })
    .await;
    let stop_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < stop_deadline && matches!(child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let meta = serde_json::json!({
        "key": key_json,
        "agent": ready_json,
        "snapshot": taken.get("snapshot"),
        "boot_ms": booted.as_millis() as u64,
        "built_ms": started.elapsed().as_millis() as u64,
    });
    for f in ["state", "memory"] {
        let p = snap.join(f);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(dir_err(&p))?;
    }
    let key_path = snap.join("key.json");
    std::fs::write(
        &key_path,
        serde_json::to_vec_pretty(&meta).unwrap_or_default(),
    )
    .map_err(dir_err(&key_path))?;
    let dest = root.join(&id);
    if std::fs::rename(&snap, &dest).is_err() {
        // Another husk built it meanwhile: use theirs if whole, else replace it.
        if super::find(state_dir, spec)?.is_none() {
            let _ = std::fs::remove_dir_all(&dest);
            std::fs::rename(&snap, &dest).map_err(dir_err(&dest))?;
        }
    }
    tracing::info!(
        id,
        ms = started.elapsed().as_millis() as u64,
        "VM template built"
    );
    drop(cleanup);
    Ok(dest)
}

/// Removes the build folders of husk processes that are gone (killed mid-build):
/// `<templates>/.build-<id>-<pid>` and `<run_dir>/template-builds/<id>-<pid>`.
fn remove_stale_builds(root: &Path, run_dir: &Path) {
    let builds = run_dir.join("template-builds");
    for (parent, prefix) in [(root, ".build-"), (builds.as_path(), "")] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(tag) = name.strip_prefix(prefix) else {
                continue;
            };
            let Some(pid) = tag.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                tracing::info!(folder = %e.path().display(), "removing a dead build's folder");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
