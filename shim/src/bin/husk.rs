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
    /// Run a command in a new container, in its own microVM. Exit status: the
    /// container's; 125 when husk failed, 127 when the command is not in the image.
    #[command(
        after_help = "IMAGE is oci:DIR[:TAG] (an OCI image layout) or oci-archive:FILE[:TAG] (a tar of one); \
the tag defaults to latest (or the layout's only one). The image's config gives the default command, \
environment, working directory and user. Images are converted to erofs once and cached under \
<state_dir>/images."
    )]
    Run(Box<RunArgs>),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Remove everything after the run (always the case today: a foreground run
    /// leaves nothing behind; accepted for docker compatibility).
    #[arg(long)]
    rm: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal (raw mode on ours, window size passed on).
    #[arg(short, long)]
    tty: bool,
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// User (name or uid) and group, resolved in the image's /etc/passwd and /etc/group.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// vCPUs of the microVM (default: vm.vcpus of the configuration).
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Memory of the microVM, e.g. 512m or 1g (default: vm.memory_mib).
    #[arg(short, long, value_name = "SIZE")]
    memory: Option<String>,
    /// A name for the container ([A-Za-z0-9_.-], at most 128).
    #[arg(long)]
    name: Option<String>,
    /// Use this folder as the root filesystem instead of an image.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// No progress messages.
    #[arg(short, long)]
    quiet: bool,
    /// Print how long each phase took (image, VM start, boot, container) on stderr.
    #[arg(long)]
    timings: bool,
    /// The image (see below); omit it with --rootfs.
    #[arg(required_unless_present = "rootfs")]
    image: Option<String>,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn run_options(a: RunArgs) -> Result<husk::run::RunOptions, String> {
    let mut command = a.command;
    let image = match (a.rootfs, a.image) {
        (Some(dir), image) => {
            // With --rootfs the first positional is the command.
            if let Some(i) = image {
                command.insert(0, i);
            }
            husk::image::ImageRef::Rootfs(dir)
        }
        (None, Some(i)) => husk::image::ImageRef::parse(&i).map_err(|e| e.to_string())?,
        (None, None) => return Err("an IMAGE or --rootfs DIR is required".into()),
    };
    let memory_mib = a
        .memory
        .as_deref()
        .map(husk::run::parse_memory)
        .transpose()?;
    Ok(husk::run::RunOptions {
        image,
        args: command,
        env: a.env,
        workdir: a.workdir,
        user: a.user,
        vcpus: a.cpus,
        memory_mib,
        name: a.name,
        interactive: a.interactive,
        tty: a.tty,
        quiet: a.quiet,
        timings: a.timings,
    })
}

fn run(config: &Config, a: RunArgs) -> ExitCode {
    let opts = match run_options(a) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::from(125);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::from(125);
        }
    };
    let code = match rt.block_on(husk::run::run(config, opts)) {
        Ok(status) => u8::try_from(status).unwrap_or(255),
        Err(e) => {
            eprintln!("husk: {e}");
            e.exit_code()
        }
    };
    // stdin may still be read by a blocking thread: do not wait for it.
    rt.shutdown_background();
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
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
        Command::Run(a) => run(&config, *a),
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
