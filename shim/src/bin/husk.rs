//! `husk`: run containers in microVMs without containerd (thin front of the library).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk::config::{Config, DEFAULT_PATH};
use husk_vmm::host::HostReport;

#[path = "husk/images.rs"]
mod images;
#[path = "husk/templates.rs"]
mod templates;

#[derive(Parser, Debug)]
#[command(name = "husk", version, about = "Run OCI containers in KVM microVMs")]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// A registry (HOST[:PORT]) to speak plain HTTP to; repeatable (also
    /// registry.insecure in the configuration).
    #[arg(long, global = true, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
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
        after_help = "IMAGE is [REGISTRY/]NAME[:TAG][@DIGEST] (pulled from a registry, docker's defaults: \
alpine is docker.io/library/alpine:latest), oci:DIR[:TAG] (an OCI image layout) or oci-archive:FILE[:TAG] \
(a tar of one); a layout's tag defaults to latest (or its only one). The image's config gives the default \
command, environment, working directory and user. Images are converted to erofs once and cached under \
<state_dir>/images.

Networks: by default the container joins the CNI network `husk` (a bridge husk0 on 10.88.0.0/16 with NAT; \
docs/network.md): it gets an address, a default route, the host's nameservers (not loopback ones) and can \
publish ports with -p. --network none leaves it only lo. `husk network ls` lists the networks.",
        disable_help_flag = true
    )]
    Run(Box<RunArgs>),
    /// Networks: `husk network ls` lists them (the default one and the CNI
    /// configuration lists in network.config_dir).
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Pull an image from a registry into <state_dir>/blobs (prints REFERENCE@DIGEST).
    Pull {
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
        /// [REGISTRY/]NAME[:TAG][@DIGEST]
        reference: String,
    },
    /// List pulled images.
    Images,
    /// VM templates: saved VMs that `husk run` restores instead of booting a kernel
    /// (built on first use for each VM shape; docs/snapshots.md).
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Remove pulled images, and the blobs no other image uses.
    Rmi {
        /// [REGISTRY/]NAME[:TAG][@DIGEST]
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Print a pulled image's digests, config and layers as JSON.
    Inspect {
        /// [REGISTRY/]NAME[:TAG][@DIGEST]
        reference: String,
    },
    /// List containers started with `run -d` (running, or exited and not removed).
    Ps,
    /// Run a command in a running (detached) container. Exit status: the command's.
    Exec {
        /// Keep stdin open and pass it on.
        #[arg(short, long)]
        interactive: bool,
        #[command(flatten)]
        process: ProcessArgs,
        /// The container's name (husk ps lists them).
        name: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Send a signal (default KILL) to a running container's process.
    Kill {
        /// The container's name.
        name: String,
        /// A signal name (TERM, SIGTERM) or number.
        #[arg(default_value = "KILL")]
        signal: String,
    },
    /// Remove a container: its folder and logs; with -f also a running one (killed).
    Rm {
        /// Also a running container (killed first).
        #[arg(short, long)]
        force: bool,
        /// The container's name.
        name: String,
    },
    /// Print a detached container's output (stdout, then stderr).
    Logs {
        /// The container's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum NetworkCommand {
    /// List the networks: NAME, DRIVER (the plugin types), SUBNET, SOURCE (the file).
    Ls,
}

#[derive(Subcommand, Debug)]
enum TemplateCommand {
    /// List the templates: id, bytes on disk (the memory file is sparse), vCPUs,
    /// memory, disks, NICs.
    Ls,
    /// Build the template `husk run --network none` would use for this VM shape now,
    /// instead of on first use; prints its id.
    Build {
        /// vCPUs (default: vm.vcpus of the configuration).
        #[arg(long, value_name = "N")]
        cpus: Option<u32>,
        /// Memory, e.g. 512m or 1g (default: vm.memory_mib).
        #[arg(short, long, value_name = "SIZE")]
        memory: Option<String>,
        /// The runs' --storage: disk (a scratch disk) or tmpfs.
        #[arg(long, value_name = "disk|tmpfs", default_value = "disk")]
        storage: String,
    },
    /// Remove templates (the next VM of that shape builds its template again).
    Rm {
        /// Template ids as `husk template ls` prints them.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Remove every template.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// What `run` and `exec` share about the process.
#[derive(clap::Args, Debug)]
struct ProcessArgs {
    /// Set an environment variable (KEY=VALUE); repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// User (name or uid) and group, resolved in the image's /etc/passwd and /etc/group.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
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
    #[command(flatten)]
    process: ProcessArgs,
    /// vCPUs of the microVM (default: vm.vcpus of the configuration).
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Memory of the microVM, e.g. 512m or 1g (default: vm.memory_mib).
    #[arg(short, long, value_name = "SIZE")]
    memory: Option<String>,
    /// Run husk-vmm without its jail (own namespaces and root, an unprivileged uid, no
    /// capabilities, a cgroup): for debugging only (default: vm.jail of the configuration).
    #[arg(long)]
    no_jail: bool,
    /// Boot the microVM's kernel even where a VM template would restore it (default:
    /// vm.templates of the configuration; templates are used only without volumes,
    /// so far).
    #[arg(long)]
    no_template: bool,
    /// Where the container's writes go: disk (a sparse ext4 scratch disk on the host,
    /// removed with the container) or tmpfs (guest RAM, for throwaway runs).
    #[arg(long, value_name = "disk|tmpfs", default_value = "disk")]
    storage: String,
    /// Size of the scratch disk, e.g. 20g (default: vm.storage_size, 10g); sparse: it
    /// costs only what is written.
    #[arg(long, value_name = "SIZE")]
    storage_size: Option<String>,
    /// Run in the background: print the container's name and return; see husk ps,
    /// exec, kill, rm, logs.
    #[arg(short, long)]
    detach: bool,
    /// A name for the container ([A-Za-z0-9_.-], at most 128).
    #[arg(long)]
    name: Option<String>,
    /// Replace the image's entrypoint ("" clears it); the image's default command is
    /// then not used.
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Read environment variables from a file (KEY=VALUE lines, # comments; KEY alone
    /// takes this shell's value); repeatable, -e wins.
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Bind a host file or folder: HOST:CONTAINER[:ro] (repeatable; served to the VM
    /// by its own virtiofsd, which sees only these paths).
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volume: Vec<String>,
    /// A mount: type=bind,source=HOST,target=PATH[,readonly] or
    /// type=tmpfs,target=PATH[,tmpfs-size=64m][,tmpfs-mode=1777] (repeatable).
    #[arg(long = "mount", value_name = "type=...,target=...")]
    mount: Vec<String>,
    /// A tmpfs at PATH with mount options, e.g. /run:size=64m (repeatable).
    #[arg(long, value_name = "PATH[:OPTIONS]")]
    tmpfs: Vec<String>,
    /// The container's root filesystem read-only (volumes and tmpfs mounts stay
    /// writable).
    #[arg(long)]
    read_only: bool,
    /// Use this folder as the root filesystem instead of an image.
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// No progress messages.
    #[arg(short, long)]
    quiet: bool,
    /// Print how long each phase took (image, VM start, boot, container) on stderr.
    #[arg(long)]
    timings: bool,
    /// When to pull a registry image: missing (not here yet), always, never.
    #[arg(long, value_enum, default_value_t)]
    pull: husk::registry::PullPolicy,
    /// The network to join: a name (`husk network ls`) or none (only lo); default:
    /// network.default of the configuration (husk).
    #[arg(long, value_name = "NAME|none")]
    network: Option<String>,
    /// Publish a container port on the host: [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]
    /// (repeatable; CNI portmap).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    publish: Vec<String>,
    /// A nameserver for the container's resolv.conf (repeatable; default: the host's,
    /// without loopback ones).
    #[arg(long, value_name = "IP")]
    dns: Vec<String>,
    /// A DNS search domain (repeatable).
    #[arg(long, value_name = "DOMAIN")]
    dns_search: Vec<String>,
    /// A resolv.conf option such as ndots:2 (repeatable).
    #[arg(long, value_name = "OPTION")]
    dns_option: Vec<String>,
    /// The container's hostname (default: its name).
    #[arg(short = 'h', long, value_name = "NAME")]
    hostname: Option<String>,
    /// Add a line to the container's /etc/hosts: NAME:IP (repeatable).
    #[arg(long, value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Print help (-h is --hostname, as in docker).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The image (see below); omit it with --rootfs.
    #[arg(required_unless_present = "rootfs")]
    image: Option<String>,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn run_options(a: RunArgs, insecure: &[String]) -> Result<husk::run::RunOptions, String> {
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
    let storage = match (a.storage.as_str(), a.storage_size.as_deref()) {
        ("tmpfs", Some(_)) => return Err("--storage-size: only with --storage disk".into()),
        (kind, Some(size)) => Some(husk::scratch::Storage::parse(
            kind,
            husk::scratch::parse_size(size).map_err(|e| format!("--storage-size {e}"))?,
        )?),
        // The size comes from the configuration.
        ("disk", None) => None,
        (kind, None) => Some(husk::scratch::Storage::parse(kind, 0)?),
    };
    let mut volumes = Vec::new();
    for v in &a.volume {
        volumes.push(husk::volumes::parse_v(v).map_err(|e| e.to_string())?);
    }
    for m in &a.mount {
        volumes.push(husk::volumes::parse_mount(m).map_err(|e| e.to_string())?);
    }
    for t in &a.tmpfs {
        volumes.push(husk::volumes::parse_tmpfs(t).map_err(|e| e.to_string())?);
    }
    let mut publish = Vec::new();
    for p in &a.publish {
        publish.push(husk::network::ports::parse_publish(p).map_err(|e| e.to_string())?);
    }
    let mut add_hosts = Vec::new();
    for h in &a.add_host {
        add_hosts.push(husk::network::files::parse_add_host(h).map_err(|e| e.to_string())?);
    }
    let dns = husk::network::files::DnsSettings {
        servers: husk::network::files::parse_dns(&a.dns).map_err(|e| e.to_string())?,
        search: a.dns_search,
        options: a.dns_option,
    };
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(husk::run::parse_env_file(f)?);
    }
    env.extend(a.process.env);
    Ok(husk::run::RunOptions {
        image,
        args: command,
        entrypoint: a.entrypoint,
        env,
        workdir: a.process.workdir,
        user: a.process.user,
        vcpus: a.cpus,
        memory_mib,
        storage,
        volumes,
        read_only: a.read_only,
        name: a.name,
        interactive: a.interactive,
        tty: a.tty,
        quiet: a.quiet,
        timings: a.timings,
        pull: a.pull,
        insecure_registries: insecure.to_vec(),
        detached: None,
        network: a.network,
        publish,
        dns,
        hostname: a.hostname,
        add_hosts,
        no_jail: a.no_jail,
        no_template: a.no_template,
    })
}

/// Set (with the report channel's fd) in the background process of `run -d`.
const DETACHED_ENV: &str = "HUSK_DETACHED_FD";

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("husk: {e}");
            None
        }
    }
}

/// `run -d`: starts this same command line again as a background process (with a
/// name), and waits for it to say the container started.
fn spawn_detached(name: Option<&str>) -> ExitCode {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let n = husk::run::random_name();
            if let Some(i) = args.iter().position(|a| a == "run") {
                args.insert(i + 1, "--name".into());
                args.insert(i + 2, n.clone().into());
            }
            n
        }
    };
    let (rx, tx) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::from(125);
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .env(DETACHED_ENV, "3")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let txfd = tx.as_raw_fd();
    // SAFETY: runs in the forked child before exec; setsid, fcntl and dup2 are
    // async-signal-safe and touch no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // fd 3 without close-on-exec (dup2 onto itself would keep the flag).
            let rc = if txfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(txfd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Err(e) = cmd.spawn() {
        eprintln!("husk: cannot start the background process: {e}");
        return ExitCode::from(125);
    }
    drop(tx);
    let mut line = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(rx)).read_line(&mut line);
    match line.trim_end().split_once(' ') {
        Some(("started", _)) => {
            println!("{name}");
            ExitCode::SUCCESS
        }
        Some(("error", rest)) => {
            let (code, msg) = rest.split_once(' ').unwrap_or(("125", rest));
            eprintln!("husk: {msg}");
            ExitCode::from(code.parse::<u8>().unwrap_or(125))
        }
        _ => {
            eprintln!(
                "husk: the background process for {name} stopped without starting the container"
            );
            ExitCode::from(125)
        }
    }
}

fn run(config: &Config, a: RunArgs, insecure: &[String]) -> ExitCode {
    let detached_fd = std::env::var(DETACHED_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok());
    if a.detach && detached_fd.is_none() {
        return spawn_detached(a.name.as_deref());
    }
    let opts = match run_options(a, insecure) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::from(125);
        }
    };
    let mut opts = opts;
    if let Some(fd) = detached_fd {
        // SAFETY: fd 3 was set up by the `run -d` that started this process and is
        // owned by nothing else here.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // Not for our children (husk-vmm): only this process may hold the channel.
        // SAFETY: fcntl on an fd this process owns; no memory is passed.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        opts.detached = Some(std::sync::Arc::new(std::sync::Mutex::new(Some(f))));
    }
    let notify = opts.detached.clone();
    let Some(rt) = runtime() else {
        return ExitCode::from(125);
    };
    let code = match rt.block_on(husk::run::run(config, opts)) {
        Ok(status) => u8::try_from(status).unwrap_or(255),
        Err(e) => {
            if let Some(n) = &notify {
                husk::run::notify(n, &format!("error {} {e}", e.exit_code()));
            }
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
            // Informative: containerd is optional for husk.
            for line in husk::shimv2::check::report(std::path::Path::new(
                husk::shimv2::check::CONTAINERD_CONFIG,
            )) {
                println!("{line}");
            }
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
        Command::Run(a) => run(&config, *a, &cli.insecure_registry),
        Command::Pull { quiet, reference } => {
            images::pull(&config, &reference, &cli.insecure_registry, quiet)
        }
        Command::Images => images::images(&config),
        Command::Template {
            command: TemplateCommand::Ls,
        } => templates::ls(&config),
        Command::Template {
            command: TemplateCommand::Rm { ids, all },
        } => templates::rm(&config, &ids, all),
        Command::Template {
            command:
                TemplateCommand::Build {
                    cpus,
                    memory,
                    storage,
                },
        } => templates::build(&config, cpus, memory.as_deref(), &storage),
        Command::Network {
            command: NetworkCommand::Ls,
        } => network_ls(&config),
        Command::Rmi { references } => images::rmi(&config, &references),
        Command::Inspect { reference } => images::inspect(&config, &reference),
        Command::Ps => {
            println!("{:<24} {:<14} {:<40} COMMAND", "NAME", "STATUS", "IMAGE");
            for c in husk::containers::list(&config) {
                println!(
                    "{:<24} {:<14} {:<40} {}",
                    c.name, c.status, c.image, c.command
                );
            }
            ExitCode::SUCCESS
        }
        Command::Logs { name } => finish(husk::containers::logs(&config, &name).map(|()| 0)),
        Command::Kill { name, signal } => {
            let r = husk::containers::parse_signal(&signal);
            with_runtime(|rt| match r {
                Ok(sig) => rt
                    .block_on(husk::containers::kill(&config, &name, sig))
                    .map(|()| 0),
                Err(e) => Err(e),
            })
        }
        Command::Rm { force, name } => with_runtime(|rt| {
            rt.block_on(husk::containers::rm(&config, &name, force))
                .map(|()| 0)
        }),
        Command::Exec {
            interactive,
            process: ProcessArgs { env, workdir, user },
            name,
            command,
        } => with_runtime(|rt| {
            rt.block_on(husk::containers::exec(
                &config,
                &name,
                &command,
                interactive,
                &env,
                workdir.as_deref(),
                user.as_deref(),
            ))
        }),
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

/// `husk network ls`: the networks `--network` takes (and files that could not be used,
/// on stderr).
fn network_ls(config: &Config) -> ExitCode {
    let loaded = husk::network::networks(&config.network);
    println!("{:<16} {:<28} {:<20} SOURCE", "NAME", "DRIVER", "SUBNET");
    for n in &loaded.networks {
        let subnets = n.subnets();
        println!(
            "{:<16} {:<28} {:<20} {}",
            n.name,
            n.plugin_types().join(","),
            if subnets.is_empty() {
                "-".to_string()
            } else {
                subnets.join(",")
            },
            n.source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(built in: [network] of the configuration)".into())
        );
    }
    println!("{:<16} {:<28} {:<20} (built in: only lo)", "none", "-", "-");
    for e in &loaded.invalid {
        eprintln!("husk: warning: not used: {e}");
    }
    if !config.network.plugin_dir.is_dir() {
        eprintln!(
            "husk: warning: the CNI plugin folder {} does not exist: install containernetworking-plugins",
            config.network.plugin_dir.display()
        );
    }
    ExitCode::SUCCESS
}

fn finish(r: Result<i32, husk::error::Error>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("husk: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn with_runtime(
    f: impl FnOnce(&tokio::runtime::Runtime) -> Result<i32, husk::error::Error>,
) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(125);
    };
    let r = f(&rt);
    rt.shutdown_background();
    finish(r)
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
