//! A container's cgroup (`/husk/<id>`, v1 or v2 as the guest has it): stats, freezer,
//! updates and the OOM-kill count, through youki's libcgroups.

use std::path::{Path, PathBuf};

use libcgroups::common::{
    AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt, create_cgroup_manager,
};
use oci_spec::runtime::LinuxResources;

use husk_agent_protocol::agent::StatsContainerResponse;

/// The cgroup path every container gets (the host's cgroupsPath means nothing here).
pub fn path(id: &str) -> PathBuf {
    PathBuf::from(format!("/husk/{id}"))
}

pub fn manager(id: &str) -> Result<AnyCgroupManager, String> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path(id),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| format!("cgroup of {id}: {e}"))
}

fn read_key(file: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// How many times the OOM killer killed in this container's cgroup.
pub fn oom_kills(id: &str) -> u64 {
    let root = Path::new("/sys/fs/cgroup");
    let rel = format!("husk/{id}");
    if root.join("cgroup.controllers").exists() {
        read_key(&root.join(&rel).join("memory.events"), "oom_kill").unwrap_or(0)
    } else {
        read_key(
            &root.join("memory").join(&rel).join("memory.oom_control"),
            "oom_kill",
        )
        .unwrap_or(0)
    }
}

pub fn stats(id: &str) -> Result<StatsContainerResponse, String> {
    let s = manager(id)?
        .stats()
        .map_err(|e| format!("stats of {id}: {e}"))?;
    let mut r = StatsContainerResponse::new();
    r.cpu_usage_ns = s.cpu.usage.usage_total;
    r.cpu_user_ns = s.cpu.usage.usage_user;
    r.cpu_system_ns = s.cpu.usage.usage_kernel;
    r.memory_usage_bytes = s.memory.memory.usage;
    // "max" (no limit) shows as u64::MAX or a huge v1 number: report 0.
    r.memory_limit_bytes = if s.memory.memory.limit >= (1 << 62) {
        0
    } else {
        s.memory.memory.limit
    };
    r.memory_max_usage_bytes = s.memory.memory.max_usage;
    r.pids_current = s.pids.current;
    r.pids_limit = s.pids.limit;
    for d in &s.blkio.service_bytes {
        match d.op_type.as_deref() {
            Some("Read" | "read" | "rbytes") => r.io_read_bytes += d.value,
            Some("Write" | "write" | "wbytes") => r.io_write_bytes += d.value,
            _ => {}
        }
    }
    r.oom_kills = oom_kills(id);
    Ok(r)
}

pub fn pids(id: &str) -> Result<Vec<u32>, String> {
    let pids = manager(id)?
        .get_all_pids()
        .map_err(|e| format!("pids of {id}: {e}"))?;
    Ok(pids
        .into_iter()
        .filter_map(|p| u32::try_from(p.as_raw()).ok())
        .collect())
}

pub fn update(id: &str, resources: &LinuxResources) -> Result<(), String> {
    manager(id)?
        .apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })
        .map_err(|e| format!("update of {id}: {e}"))
}
