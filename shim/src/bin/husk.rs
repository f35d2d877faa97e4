//! `husk`: run containers in microVMs without containerd (thin front of the library).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk::config::{Config, DEFAULT_PATH};
use husk_vmm::host::HostReport;

#[derive(Parser, Debug)]
#[command(name = "husk", version, about = "Run OCI containers in KVM microVMs")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check this host: KVM and its backend, devices, and whether stock guest kernels
    /// boot here. Exits 0 when they do, 1 otherwise.
    Check,
    /// Print the effective configuration (the file's values over the defaults).
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            // docker's convention: 125 when the runtime itself failed.
            return ExitCode::from(125);
        }
    };
    match cli.command {
        Command::Check => {
            let report = HostReport::probe();
            print!("{}", report.to_text());
            if report.boots_stock_kernels() {
                ExitCode::SUCCESS
            } else {
                if config.vm.kernel.is_none() {
                    println!(
                        "hint: on this host, run husk inside the lab (tests/lab/run), or set \
                         vm.kernel in {} to a kernel that boots here",
                        cli.config.display()
                    );
                }
                ExitCode::from(1)
            }
        }
        Command::Config => match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("husk: cannot print the configuration: {e}");
                ExitCode::from(125)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
