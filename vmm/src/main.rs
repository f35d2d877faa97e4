//! `husk-vmm`: thin command-line front of the husk-vmm library.
//!
//! Exit status: 0 when the guest powered off or reset; 1 when it crashed; 2 for a bad
//! configuration or command line; 3 when the host failed; 4 when the host stopped it
//! (API shutdown, SIGTERM/SIGINT/SIGHUP).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk_vmm::api::server::ApiSocket;
use husk_vmm::config::VmConfig;
use husk_vmm::devices::ExitReason;
use husk_vmm::exit_status::VmmExit;
use husk_vmm::host::HostReport;
use husk_vmm::machine::{Machine, MachineError, RunOptions};
use husk_vmm::report::Report;
use husk_vmm::snapshot::memory::MemoryMode;

#[derive(Parser, Debug)]
#[command(
    name = "husk-vmm",
    version,
    about = "husk's virtual machine monitor: runs one KVM microVM",
    subcommand_negates_reqs = true,
    after_help = "Exit status: 0 guest powered off or reset, 1 guest crashed, \
                  2 bad configuration, 3 host failure, 4 stopped by the host \
                  (API shutdown or SIGTERM/SIGINT/SIGHUP)."
)]
struct Cli {
    /// The VM configuration (JSON; see docs/vmm-config.md).
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Serve the control API (pause, resume, shutdown, metrics, status) on this unix
    /// socket.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Run without the seccomp filter (for debugging only).
    #[arg(long)]
    no_seccomp: bool,
    /// When the VM stops, write a JSON report here: exit reason, run time, peak RSS,
    /// guest RSS and the VMM's own overhead, device counters.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Restore the VM saved in this snapshot folder (the API's `snapshot`) instead of
    /// booting: --config gives this VM's host-side paths (disks, sockets, console) and
    /// must have the snapshot's shape (vCPUs, memory, devices). See docs/snapshots.md.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// How a restore gets guest memory: `map` (copy-on-write from the snapshot's memory
    /// file, shared with other VMs restored from it; the default) or `copy` (read into
    /// memory of this VM's own first). A VM with virtio-fs shares needs `copy` (into
    /// shared memory its virtiofsd maps), which is then the default.
    #[arg(long, value_name = "MODE", requires = "restore")]
    restore_memory: Option<husk_vmm::snapshot::memory::MemoryMode>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print what this host offers a VMM: KVM API version and backend (kvm_intel,
    /// kvm_amd, kvm_pvm), capabilities, vhost devices, tun. Exits 0 when the host can
    /// boot stock guest kernels, 1 otherwise.
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: husk keeps this log in a file (vmm.log) and reads it.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Every vsock connection is a descriptor: take the hard limit, not the shell's.
    husk_vmm::devices::virtio::vsock::host::raise_file_limit();
    if let Some(Command::Check { json }) = cli.command {
        return check(json);
    }
    // From here on SIGTERM/SIGINT/SIGHUP wait for the signal thread, so that a stop
    // during set-up still removes what was created.
    if let Err(e) = husk_vmm::signals::block_stop_signals() {
        eprintln!("husk-vmm: cannot block stop signals: {e}");
        return ExitCode::from(VmmExit::HostError.code());
    }
    let Some(path) = cli.config else {
        return ExitCode::from(VmmExit::BadConfig.code());
    };
    let restore = cli.restore.as_deref().map(|d| (d, cli.restore_memory));
    let status = match run(
        &path,
        cli.api_sock.as_deref(),
        cli.report.as_deref(),
        !cli.no_seccomp,
        restore,
    ) {
        Ok(reason) => {
            match &reason {
                ExitReason::Poweroff => tracing::info!("guest powered off"),
                ExitReason::Reset => tracing::info!("guest reset"),
                ExitReason::Crash(why) => eprintln!("husk-vmm: the guest crashed: {why}"),
                ExitReason::HostError(why) => eprintln!("husk-vmm: host failure: {why}"),
                ExitReason::Stopped(why) => eprintln!("husk-vmm: stopped: {why}"),
            }
            VmmExit::of(&reason)
        }
        Err(e) => {
            eprintln!("husk-vmm: {}", husk_vmm::api::error_chain(&e));
            if e.is_config_error() {
                VmmExit::BadConfig
            } else {
                VmmExit::HostError
            }
        }
    };
    ExitCode::from(status.code())
}

fn run(
    path: &Path,
    api_sock: Option<&Path>,
    report: Option<&Path>,
    seccomp: bool,
    restore: Option<(&Path, Option<MemoryMode>)>,
) -> Result<ExitReason, MachineError> {
    let started = std::time::Instant::now();
    let config = VmConfig::from_file(path)?;
    let api = api_sock.map(ApiSocket::bind).transpose()?;
    let machine = match restore {
        Some((dir, mode)) => {
            let m = Machine::restore(&config, dir, mode)?;
            tracing::info!(
                restore_ms = started.elapsed().as_millis() as u64,
                "restored"
            );
            m
        }
        None => Machine::from_config(&config)?,
    };
    let opts = RunOptions {
        api: api.as_ref(),
        handle_signals: true,
        seccomp,
    };
    machine.run_with(opts, |reason, m| {
        let Some(path) = report else {
            return;
        };
        let r = Report::new(
            reason,
            started.elapsed().as_millis(),
            Some(m.memory()),
            m.device_metrics(),
        );
        if let Err(e) = r.write(path) {
            eprintln!("husk-vmm: cannot write the report {}: {e}", path.display());
        }
    })
}

fn check(json: bool) -> ExitCode {
    let report = HostReport::probe();
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("husk-vmm: {e}");
                return ExitCode::from(VmmExit::HostError.code());
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    if report.boots_stock_kernels() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["husk-vmm"]).is_err());
        assert!(Cli::try_parse_from(["husk-vmm", "check"]).is_ok());
        assert!(Cli::try_parse_from(["husk-vmm", "--config", "vm.json"]).is_ok());
        assert!(
            Cli::try_parse_from(["husk-vmm", "--config", "vm.json", "--restore", "/s"]).is_ok()
        );
        assert!(
            Cli::try_parse_from(["husk-vmm", "--config", "c", "--restore-memory", "copy"]).is_err(),
            "--restore-memory needs --restore"
        );
        assert!(
            Cli::try_parse_from([
                "husk-vmm",
                "--config",
                "c",
                "--restore",
                "/s",
                "--restore-memory",
                "x"
            ])
            .is_err()
        );
    }
}
