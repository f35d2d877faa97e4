//! Running commands in the lab from Rust: a thin wrapper over `tests/lab/run`.
//!
//! The lab boots an L1 Linux under QEMU TCG (a few seconds; see ../shared/lab.md) unless
//! the host has hardware KVM. Only one lab runs at a time across the test processes (a
//! lock file under `build/`): two emulated L1s on a 2-core machine slow each other down
//! past their timeouts.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::repo_root;

/// How the lab ran the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabMode {
    /// On this host, which has hardware KVM.
    Direct,
    /// Inside an L1 Linux under QEMU TCG.
    Emulated,
}

/// What a command run in the lab did.
#[derive(Debug, Clone)]
pub struct LabOutput {
    pub mode: Option<LabMode>,
    /// The exit status of `tests/lab/run`: the command's own, 124 on timeout, 125 when
    /// the lab failed.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl LabOutput {
    /// Panics with both output streams unless the command exited 0.
    pub fn assert_success(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "lab command failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The `CASE name value` lines of stdout (the CLI system tests' scripts print
    /// them), by name.
    pub fn cases(&self) -> std::collections::HashMap<&str, &str> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("CASE "))
            .map(|l| l.split_once(' ').unwrap_or((l, "")))
            .collect()
    }
}

/// A lab run's settings; `run` or `run_script` starts it.
#[derive(Debug, Clone)]
pub struct Lab {
    timeout: Duration,
    mem_mib: u32,
    cpus: u32,
    out: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Default for Lab {
    fn default() -> Self {
        Lab {
            timeout: Duration::from_secs(300),
            mem_mib: 2048,
            cpus: 1,
            out: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

impl Lab {
    pub fn new() -> Lab {
        Lab::default()
    }

    /// Stops the command (and the L1) after this long; the run then exits 124.
    pub fn timeout(mut self, t: Duration) -> Lab {
        self.timeout = t;
        self
    }

    /// L1 memory (emulated mode).
    pub fn mem_mib(mut self, m: u32) -> Lab {
        self.mem_mib = m;
        self
    }

    /// L1 vCPUs (emulated mode).
    pub fn cpus(mut self, n: u32) -> Lab {
        self.cpus = n;
        self
    }

    /// The results folder, `$LAB_OUT` inside (same path).
    pub fn out_dir(mut self, p: &Path) -> Lab {
        self.out = Some(p.to_path_buf());
        self
    }

    /// Extra options for `tests/lab/run` (tests of the lab itself use this).
    pub fn raw_args(mut self, args: &[&str]) -> Lab {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Sets an environment variable for `tests/lab/run` (and so for the command).
    pub fn env(mut self, key: &str, value: &str) -> Lab {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs `cmd` in the lab and waits for it.
    pub fn run<S: AsRef<str>>(&self, cmd: &[S]) -> std::io::Result<LabOutput> {
        let _lock = lab_lock()?;
        let mut c = Command::new(repo_root().join("tests/lab/run"));
        c.arg("--timeout")
            .arg(self.timeout.as_secs().max(1).to_string())
            .arg("--mem")
            .arg(self.mem_mib.to_string())
            .arg("--cpus")
            .arg(self.cpus.to_string());
        if let Some(out) = &self.out {
            c.arg("--out").arg(out);
        }
        c.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .arg("--")
            .args(cmd.iter().map(|s| s.as_ref()))
            .stdin(Stdio::null());
        let out = c.output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        Ok(LabOutput {
            mode: parse_mode(&stderr),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        })
    }

    /// Runs a bash script in the lab (`bash -euo pipefail -c SCRIPT`).
    pub fn run_script(&self, script: &str) -> std::io::Result<LabOutput> {
        self.run(&["bash", "-euo", "pipefail", "-c", script])
    }
}

fn parse_mode(stderr: &str) -> Option<LabMode> {
    stderr.lines().find_map(|l| {
        if l.starts_with("lab: mode=direct") {
            Some(LabMode::Direct)
        } else if l.starts_with("lab: mode=emulated") {
            Some(LabMode::Emulated)
        } else {
            None
        }
    })
}

/// Set in the environment of a test re-run inside the lab by [`Lab::run_test`].
pub const INSIDE_ENV: &str = "HUSK_INSIDE_LAB";

/// Whether this process is a test re-run inside the lab.
pub fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

impl Lab {
    /// Runs the test binary itself inside the lab, with only the (ignored) test
    /// `name`: the test's host-side code (ttrpc clients and the like) then runs where
    /// `/dev/kvm` boots real guests. The inner test checks [`inside`].
    pub fn run_test(self, name: &str) -> std::io::Result<LabOutput> {
        let exe = std::env::current_exe()?;
        self.env(INSIDE_ENV, "1").run(&[
            exe.display().to_string(),
            "--exact".into(),
            name.into(),
            "--ignored".into(),
            "--nocapture".into(),
            "--test-threads=1".into(),
        ])
    }
}

/// Serialises lab runs across test threads and processes.
fn lab_lock() -> std::io::Result<File> {
    let dir = repo_root().join("build");
    std::fs::create_dir_all(&dir)?;
    let f = File::create(dir.join("lab.lock"))?;
    f.lock()?;
    Ok(f)
}

/// Whether the lab can run here: `Ok(description of the mode)` or `Err(why not)`.
pub fn availability() -> Result<String, String> {
    let out = Command::new(repo_root().join("tests/lab/run"))
        .arg("--check")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run tests/lab/run: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A [`Lab`] when the lab can run here. Otherwise: a panic when `HUSK_REQUIRE_LAB=1`,
/// else `None` after a loud SKIPPED line on stderr. Use [`require_lab!`].
pub fn require(test: &str) -> Option<Lab> {
    match availability() {
        Ok(_) => Some(Lab::new()),
        Err(why) => {
            if std::env::var("HUSK_REQUIRE_LAB").is_ok_and(|v| v == "1") {
                panic!("{test}: the lab is required (HUSK_REQUIRE_LAB=1) but cannot run: {why}");
            }
            eprintln!("SKIPPED {test}: the lab cannot run here: {why}");
            None
        }
    }
}

/// Starts a system test: evaluates to a [`Lab`], or returns from the test after saying
/// loudly why it was skipped (see [`require`]).
#[macro_export]
macro_rules! require_lab {
    () => {
        match $crate::lab::require(module_path!()) {
            Some(lab) => lab,
            None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_is_read_from_the_runner_banner() {
        assert_eq!(
            parse_mode("x\nlab: mode=emulated (kvm_pvm): booting\n"),
            Some(LabMode::Emulated)
        );
        assert_eq!(
            parse_mode("lab: mode=direct (hardware KVM: kvm_amd)"),
            Some(LabMode::Direct)
        );
        assert_eq!(parse_mode("lab: error: nope"), None);
    }
}
