//! `husk template ls`, `husk template rm`: the VM templates in <state_dir>/templates
//! (the work is the library's `husk::template`; this formats it).

use std::process::ExitCode;

use husk::config::Config;

/// `husk template ls`: id, size on disk, vCPUs, memory, disks, whether the VM has the
/// virtio-fs share (volumes, pods), NICs (their MTUs).
pub fn ls(config: &Config) -> ExitCode {
    let list = match husk::template::list(&config.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::from(125);
        }
    };
    println!(
        "{:<34} {:>10} {:>6} {:>8} {:<8} {:<5} NICS",
        "TEMPLATE", "ON DISK", "CPUS", "MEMORY", "DISKS", "SHARE"
    );
    for t in list {
        let k = &t.key["key"];
        let disks = k["disks"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|ro| if ro == true { "ro" } else { "rw" })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let nics = k["nics"]
            .as_array()
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.iter()
                    .map(|mtu| format!("mtu {mtu}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "-".into());
        let share = k["fs"].as_array().is_some_and(|f| !f.is_empty());
        println!(
            "{:<34} {:>9}M {:>6} {:>7}M {:<8} {:<5} {}",
            t.id,
            t.disk_bytes >> 20,
            // A JSON value's Display ignores widths: format its text.
            k["vcpus"].to_string(),
            k["memory_mib"].to_string(),
            disks,
            if share { "yes" } else { "-" },
            nics
        );
    }
    ExitCode::SUCCESS
}

/// `husk template build [--cpus N] [-m SIZE] [--storage disk|tmpfs]`: prints the id.
pub fn build(config: &Config, cpus: Option<u32>, memory: Option<&str>, storage: &str) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("husk: {e}");
        ExitCode::from(125)
    };
    let memory_mib = match memory.map(husk::run::parse_memory).transpose() {
        Ok(m) => m,
        Err(e) => return fail(&format!("--memory {}: {e}", memory.unwrap_or_default())),
    };
    let scratch = match storage {
        "disk" => true,
        "tmpfs" => false,
        other => return fail(&format!("--storage {other:?}: want disk or tmpfs")),
    };
    if cpus == Some(0) {
        return fail(&"--cpus 0: at least 1");
    }
    let spec = match husk::template::run_shape(config, cpus, memory_mib, scratch) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Ok(Some(dir)) = husk::template::find(&config.state_dir, &spec) {
        eprintln!("husk: the template exists already");
        println!("{}", dir.file_name().unwrap_or_default().to_string_lossy());
        return ExitCode::SUCCESS;
    }
    let Some(rt) = super::runtime() else {
        return ExitCode::from(125);
    };
    eprintln!("husk: building a VM template (a VM boots once, then is saved)");
    let r = rt.block_on(husk::template::build(
        &config.state_dir,
        &config.run_dir,
        &spec,
    ));
    rt.shutdown_background();
    match r {
        Ok(dir) => {
            println!("{}", dir.file_name().unwrap_or_default().to_string_lossy());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `husk template rm ID... | --all`.
pub fn rm(config: &Config, ids: &[String], all: bool) -> ExitCode {
    let ids: Vec<String> = if all {
        husk::template::forget_refusals(&config.state_dir);
        match husk::template::list(&config.state_dir) {
            Ok(l) => l.into_iter().map(|t| t.id).collect(),
            Err(e) => {
                eprintln!("husk: {e}");
                return ExitCode::from(125);
            }
        }
    } else {
        ids.to_vec()
    };
    let mut status = ExitCode::SUCCESS;
    for id in ids {
        match husk::template::remove(&config.state_dir, &id) {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("husk: {e}");
                status = ExitCode::from(125);
            }
        }
    }
    status
}
