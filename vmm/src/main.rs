//! `husk-vmm`: thin command-line front of the husk-vmm library.

use clap::{Parser, Subcommand};
use husk_vmm::host::HostReport;

#[derive(Parser, Debug)]
#[command(name = "husk-vmm", version, about = "husk's virtual machine monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { json } => {
            let report = HostReport::probe();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.boots_stock_kernels() {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
