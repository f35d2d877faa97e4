//! `husk template ls`, `husk template rm`: the VM templates in <state_dir>/templates
//! (the work is the library's `husk::template`; this formats it).

use std::process::ExitCode;

use husk::config::Config;

/// `husk template ls`: id, size on disk, vCPUs, memory, disks.
pub fn ls(config: &Config) -> ExitCode {
    let list = match husk::template::list(&config.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::from(125);
        }
    };
    println!(
        "{:<34} {:>10} {:>6} {:>8} DISKS",
        "TEMPLATE", "ON DISK", "CPUS", "MEMORY"
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
        println!(
            "{:<34} {:>9}M {:>6} {:>7}M {}",
            t.id,
            t.disk_bytes >> 20,
            k["vcpus"],
            k["memory_mib"],
            disks
        );
    }
    ExitCode::SUCCESS
}

/// `husk template rm ID... | --all`.
pub fn rm(config: &Config, ids: &[String], all: bool) -> ExitCode {
    let ids: Vec<String> = if all {
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
