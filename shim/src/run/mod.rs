//! `husk run`: an image, a microVM, one container in it, its stdio on ours, its exit
//! status as ours. Everything it created is gone when it returns (also on errors).
//!
//! A user of the library like the shim will be: it builds a [`SandboxSpec`] and the
//! container's spec, boots the [`Sandbox`], and drives the container through a
//! [`Pod`] with [`ProcessStdio`] endpoints (ours, or a detached run's log files).
//! Failures are the library's [`Error`]; its kind gives the exit code (125, 126, 127).

use std::time::{Duration, Instant};

use husk_agent_protocol::agent::Rootfs;
use husk_agent_protocol::{spec, validate};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::guest::{GuestImage, vmm_binary};
use crate::image::{ImageError, ImageRef, prepare_with};
pub use crate::layout::ContainerDir;
use crate::pod::Pod;
use crate::sandbox::{Disk, Sandbox, SandboxSpec, reap_stale};
use crate::scratch::Storage;
use crate::stdio::{Input, Output, ProcessStdio};
use crate::tty;

mod options;
mod timings;

pub use options::{insecure_registries, parse_env_file, parse_memory, random_name};
pub use timings::Timings;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub image: ImageRef,
    pub args: Vec<String>,
    /// Replaces the image's entrypoint ("" clears it); the image's Cmd is then not used.
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// Where the writable layer lives (default: a scratch disk of vm.storage_size).
    pub storage: Option<Storage>,
    /// Bind and tmpfs mounts (crate::volumes).
    pub volumes: Vec<crate::volumes::Volume>,
    /// The root filesystem read-only (`--read-only`).
    pub read_only: bool,
    pub name: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub quiet: bool,
    pub timings: bool,
    /// When a registry image is pulled (`--pull`).
    pub pull: crate::registry::PullPolicy,
    /// Registries spoken to over plain HTTP, besides the configuration's.
    pub insecure_registries: Vec<String>,
    /// Set in the background process of `husk run -d`: output goes to log files in
    /// the container's folder, and "started" is reported here once it runs.
    pub detached: Option<Notify>,
    /// The network (`--network`): a name, `none`, or `None` for the configuration's
    /// default.
    pub network: Option<String>,
    /// Published ports (`-p`).
    pub publish: Vec<crate::network::ports::PortMapping>,
    /// Run husk-vmm without its jail (`--no-jail`; crate::jail).
    pub no_jail: bool,
    /// Boot the VM even where a template would do (`--no-template`).
    pub no_template: bool,
    /// `--dns`, `--dns-search`, `--dns-option`.
    pub dns: crate::network::files::DnsSettings,
    /// `--hostname` (default: the container's name).
    pub hostname: Option<String>,
    /// `--add-host NAME:IP` entries.
    pub add_hosts: Vec<(String, std::net::IpAddr)>,
}

/// The channel a detached run reports on (to the `husk run -d` that started it).
pub type Notify = std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>;

/// Sends one line on a detached run's channel (once; later calls do nothing).
pub fn notify(n: &Notify, line: &str) {
    use std::io::Write;
    if let Some(mut f) = n.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = writeln!(f, "{line}");
    }
}

/// The process the container runs: the image's defaults under the options.
fn process_spec(
    opts: &RunOptions,
    image: &crate::image::ImageConfig,
    hostname: &str,
) -> Result<serde_json::Value, Error> {
    // As docker: --entrypoint replaces the image's entrypoint and drops its Cmd.
    let mut args: Vec<String> = match opts.entrypoint.as_deref() {
        None => image.entrypoint.clone(),
        Some("") => Vec::new(),
        Some(e) => vec![e.to_string()],
    };
    if opts.args.is_empty() && opts.entrypoint.is_none() {
        args.extend(image.cmd.iter().cloned());
    } else {
        args.extend(opts.args.iter().cloned());
    }
    if args.is_empty() {
        return Err(Error::invalid(
            "no command: the image has none and none was given",
        ));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = spec::default_spec(&argv);
    let mut env: Vec<String> = if image.env.is_empty() {
        s["process"]["env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        image.env.clone()
    };
    for e in &opts.env {
        let key = e.split('=').next().unwrap_or("");
        if key.is_empty() || !e.contains('=') {
            return Err(Error::invalid(format!("-e {e:?}: expected KEY=VALUE")));
        }
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    s["process"]["env"] = serde_json::json!(env);
    let cwd = opts
        .workdir
        .clone()
        .unwrap_or_else(|| image.working_dir.clone());
    if !cwd.is_empty() {
        if !cwd.starts_with('/') {
            return Err(Error::invalid(format!(
                "-w {cwd:?}: must be an absolute path"
            )));
        }
        s["process"]["cwd"] = serde_json::json!(cwd);
    }
    s["process"]["terminal"] = serde_json::json!(opts.tty);
    let guest_share = format!("{}/{}", crate::share::GUEST_DIR, crate::share::TAG);
    let extra = crate::volumes::spec_mounts(&opts.volumes, &guest_share)
        .map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(m) = s["mounts"].as_array_mut() {
        // A volume replaces a default mount at its path (docker lets -v /dev/shm win).
        m.retain(|x| !extra.iter().any(|e| e["destination"] == x["destination"]));
        m.extend(extra);
    }
    if opts.read_only {
        s["root"]["readonly"] = serde_json::json!(true);
    }
    s["hostname"] = serde_json::json!(hostname);
    Ok(s)
}

/// Runs a container to its end; returns its exit status.
pub async fn run(config: &Config, opts: RunOptions) -> Result<i32, Error> {
    let progress = |m: &str| crate::sandbox::progress(!opts.quiet && tty::stderr_is_terminal(), m);
    let mut t = Timings::default();
    if let Some(n) = &opts.name {
        validate::id("--name", n).map_err(|e| Error::invalid(e.to_string()))?;
        // As docker: the first character is a letter or digit (run_dir's own folders,
        // such as .networks, start with a dot).
        if !n.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Error::invalid(format!(
                "--name {n:?}: must start with a letter or digit"
            )));
        }
    }
    if let Some(h) = &opts.hostname {
        crate::network::files::check_hostname(h).map_err(|e| Error::invalid(e.to_string()))?;
    }
    crate::network::files::check_dns_words(&opts.dns.search, &opts.dns.options)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let network = network_of(config, &opts)?;
    if opts.vcpus == Some(0) {
        return Err(Error::invalid("--cpus: at least 1"));
    }
    if opts.tty && opts.interactive && opts.detached.is_none() && !tty::stdin_is_terminal() {
        return Err(Error::invalid("-t: the input device is not a terminal"));
    }
    let name = opts.name.clone().unwrap_or_else(random_name);
    std::fs::create_dir_all(&config.run_dir)
        .map_err(|e| Error::internal(format!("run_dir {}: {e}", config.run_dir.display())))?;
    reap(config);
    let cdir = ContainerDir::of(config, &name);
    if let Err(e) = cdir.create(
        &crate::procid::ProcId::me().to_record(),
        &info(&opts, &name),
    ) {
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::msg(
                ErrorKind::AlreadyExists,
                format!("--name {name}: a container with this name exists (husk rm {name})"),
            ),
            _ => Error::internal(format!("{}: {e}", cdir.path.display())),
        });
    }
    let result = run_prepared(config, &opts, &cdir, network.as_ref(), &progress, &mut t).await;
    if opts.detached.is_none() || result.is_err() {
        cdir.remove();
    }
    if opts.timings {
        eprintln!("husk: timings: {}", t.line());
    }
    result
}

/// The network a run joins (`None`: `--network none`), checked before anything is made.
fn network_of(
    config: &Config,
    opts: &RunOptions,
) -> Result<Option<crate::network::cni::NetworkList>, Error> {
    let name = opts
        .network
        .clone()
        .unwrap_or_else(|| config.network.default.clone());
    if name == "none" {
        if let Some(p) = opts.publish.first() {
            return Err(Error::invalid(format!(
                "-p {}:{}: --network none has no network to publish ports on",
                p.host_port, p.container_port
            )));
        }
        return Ok(None);
    }
    Ok(Some(crate::network::find(&config.network, &name)?))
}

/// The container's hostname: `--hostname`, else its name when that is a valid
/// hostname (docker uses the short id), else "husk".
fn hostname_of(opts: &RunOptions, name: &str) -> String {
    match &opts.hostname {
        Some(h) => h.clone(),
        None if crate::network::files::check_hostname(name).is_ok() => name.to_string(),
        None => "husk".into(),
    }
}

async fn run_prepared(
    config: &Config,
    opts: &RunOptions,
    cdir: &ContainerDir,
    network: Option<&crate::network::cni::NetworkList>,
    progress: &(dyn Fn(&str) + Sync),
    t: &mut Timings,
) -> Result<i32, Error> {
    let t0 = Instant::now();
    if let ImageRef::Registry(r) = &opts.image {
        let pull = crate::registry::PullOptions {
            insecure: insecure_registries(config, &opts.insecure_registries),
            quiet: opts.quiet,
        };
        crate::registry::ensure(&config.state_dir, r, opts.pull, &pull)
            .await
            .map_err(ImageError::from)?;
    }
    // Before converting the image and booting: a host that cannot boot the guest says
    // so now.
    crate::preflight::check(config)?;
    if config.vm.jail && !opts.no_jail {
        crate::jail::cgroup::check()?;
    }
    let image = prepare_with(
        &opts.image,
        &config.state_dir,
        &cdir.path,
        &config.image.limits(),
        progress,
    )?;
    t.image = t0.elapsed();
    let hostname = hostname_of(opts, &cdir.name);
    let process = process_spec(opts, &image.config, &hostname)?;
    let user = opts
        .user
        .clone()
        .unwrap_or_else(|| image.config.user.clone());
    let guest = GuestImage::locate(&config.state_dir, config.vm.kernel.as_deref())?;
    let mut disks = vec![Disk {
        path: image.erofs.clone(),
        read_only: true,
    }];
    // A read-only root writes nothing: no scratch disk.
    let storage = match (opts.read_only, opts.storage) {
        (true, _) => Storage::Tmpfs,
        (false, Some(s)) => s,
        (false, None) => Storage::Disk {
            size: config.storage_size(),
        },
    };
    if let Storage::Disk { size } = storage {
        // Under the state folder (on disk; the run folder is a tmpfs); it goes with the
        // container (cdir.remove, and reap for a killed husk).
        t.scratch = crate::scratch::create(&cdir.scratch, size)?;
        disks.push(Disk {
            path: cdir.scratch.clone(),
            read_only: false,
        });
    }
    // The network last (it costs CNI and iptables work): everything after it undoes it.
    let attached = match network {
        None => None,
        Some(list) => {
            progress("attaching the network");
            let a = crate::network::attach(
                &config.network,
                &config.run_dir,
                &cdir.name,
                list,
                &opts.publish,
            )?;
            t.cni_add = a.add_time;
            t.tap = a.tap_time;
            Some(a)
        }
    };
    let result = boot_and_run(
        config,
        opts,
        cdir,
        disks,
        &guest,
        &process,
        &user,
        storage,
        &hostname,
        attached.as_ref(),
        progress,
        t,
    )
    .await;
    if let Some(a) = attached {
        let (took, errors) = a.detach(&config.run_dir);
        t.cni_del = took;
        for e in errors {
            eprintln!("husk: warning: removing the network: {e}");
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn boot_and_run(
    config: &Config,
    opts: &RunOptions,
    cdir: &ContainerDir,
    disks: Vec<Disk>,
    guest: &GuestImage,
    process: &serde_json::Value,
    user: &str,
    storage: Storage,
    hostname: &str,
    net: Option<&crate::network::Attached>,
    progress: &(dyn Fn(&str) + Sync),
    t: &mut Timings,
) -> Result<i32, Error> {
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let empty = crate::network::GuestNetwork::default();
    let g = net.map_or(&empty, |a| &a.guest);
    let name_files = crate::network::files::name_files(
        hostname,
        &g.ips,
        &opts.add_hosts,
        &host_resolv,
        &opts.dns,
        &g.nameservers,
        &g.search,
    );
    let nics = match net.and_then(|a| a.tap_fd().map(|fd| (fd, &a.guest))) {
        Some((fd, g)) => vec![crate::sandbox::Nic {
            fd,
            mac: g.mac.clone(),
            mtu: g.mtu,
        }],
        None => Vec::new(),
    };
    let sb_spec = SandboxSpec {
        vcpus: opts.vcpus.unwrap_or(config.vm.vcpus),
        memory_mib: opts.memory_mib.unwrap_or(config.vm.memory_mib),
        disks,
        exports: crate::volumes::binds(&opts.volumes)
            .into_iter()
            .map(|(name, source, read_only)| crate::share::Export {
                name,
                source: source.to_path_buf(),
                read_only,
            })
            .collect(),
        nics,
        hostname: hostname.to_string(),
        name_files: Some(name_files),
        jail: (config.vm.jail && !opts.no_jail).then(|| crate::jail::JailSpec {
            settings: config.jail.clone(),
            run_dir: config.run_dir.clone(),
        }),
        ..SandboxSpec::new(&cdir.name, cdir.vm(), vmm_binary()?, guest)
    };
    let tt = Instant::now();
    let template = if config.vm.templates && !opts.no_template {
        crate::template::ensure(&config.state_dir, &config.run_dir, &sb_spec, progress).await
    } else {
        None
    };
    if template.is_some() {
        t.template_build = tt.elapsed();
    }
    let sb_spec = SandboxSpec {
        template,
        ..sb_spec
    };
    progress(if sb_spec.template.is_some() {
        "restoring the microVM from its template"
    } else {
        "starting the microVM"
    });
    let mut sb = Sandbox::boot(&sb_spec).await?;
    let mut configured = configure_network(&sb, net, t).await;
    // A clone that cannot take its network (its NIC not as the template left it) is
    // not used half-way: no container has started, so the template is discarded and
    // the VM boots; the next run of the shape builds a new one.
    if let (Err(e), Some(template)) = (&configured, &sb_spec.template)
        && sb.times.restored
    {
        eprintln!(
            "husk: warning: the VM restored from its template could not take its network ({e}); booting"
        );
        crate::template::discard(template);
        sb.shutdown().await;
        sb = Sandbox::boot(&SandboxSpec {
            template: None,
            ..sb_spec.clone()
        })
        .await?;
        configured = configure_network(&sb, net, t).await;
    }
    t.vm_start = sb.times.vmm_spawned;
    t.restored = sb.times.restored;
    t.agent_ready = sb.times.connected;
    t.guest_uptime = sb.times.guest_uptime;
    let mut result = match configured {
        Ok(()) => run_in(&sb, opts, cdir, process, user, storage, t).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &result
        && e.kind() != ErrorKind::CommandNotFound
        && let Some(why) = sb.stopped(Duration::from_millis(300)).await
    {
        // The agent's connection went because the VM did: say why.
        result = Err(Error::msg(ErrorKind::Unavailable, format!("{e}\n{why}")));
    }
    if let Storage::Disk { .. } = storage {
        warn_host_disk_errors(&sb.dir.vmm_log(), &cdir.scratch);
    }
    let ts = Instant::now();
    sb.shutdown().await;
    t.stop = ts.elapsed();
    if opts.detached.is_some()
        && let Ok(status) = &result
    {
        let _ = std::fs::write(cdir.exit(), format!("{status}\n"));
    }
    result
}

/// Says so when husk-vmm reported (in `vmm_log`) that a disk's image on the host
/// refused a write: the container saw I/O errors, and the reason (a full disk under the
/// state folder, most often) is the host's, not the container's.
fn warn_host_disk_errors(vmm_log: &std::path::Path, scratch: &std::path::Path) {
    if let Some(why) = host_disk_error(&crate::sandbox::read_tail(vmm_log)) {
        eprintln!(
            "husk: warning: the container's writable layer could not be written on the host \
             ({}: {why}); the container saw I/O errors",
            scratch.display()
        );
    }
}

/// The host's error in husk-vmm's last "the disk's image refused" warning (see
/// husk-vmm's block device), if its log has one.
fn host_disk_error(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("the disk's image refused"))?;
    let why = line
        .split_once(" error=")
        .map_or("an I/O error", |(_, rest)| {
            rest.split(" failures=").next().unwrap_or(rest)
        });
    Some(why.to_string())
}

/// Configures the guest's NIC for `net`, if any.
async fn configure_network(
    sb: &Sandbox,
    net: Option<&crate::network::Attached>,
    t: &mut Timings,
) -> Result<(), Error> {
    let Some(a) = net else {
        return Ok(());
    };
    let tn = Instant::now();
    let r = sb.configure_network(&a.guest).await;
    t.guest_net = tn.elapsed();
    r.map_err(|e| {
        Error::msg(
            e.kind(),
            format!("configuring the guest's network ({}): {e}", a.network()),
        )
    })
}

/// Where the container's stdio goes: ours (a foreground run; without -t its output
/// may not drive our terminal, crate::sanitize) or the log files of a detached run.
fn run_stdio(opts: &RunOptions, cdir: &ContainerDir) -> ProcessStdio {
    let (stdout, stderr) = match &opts.detached {
        None => (
            Output::Stdout {
                sanitize: !opts.tty && tty::stdout_is_terminal(),
            },
            Output::Stderr {
                sanitize: tty::stderr_is_terminal(),
            },
        ),
        Some(_) => (
            Output::File(cdir.stdout_log()),
            Output::File(cdir.stderr_log()),
        ),
    };
    ProcessStdio {
        // A detached run's stdin is /dev/null: it reads EOF at once.
        stdin: opts.interactive.then_some(Input::Stdin),
        stdout: Some(stdout),
        // With -t the terminal carries both.
        stderr: (!opts.tty).then_some(stderr),
        terminal: opts.tty,
        namespace: None,
    }
}

/// The container's root: the image (erofs, /dev/vda) under an overlay whose upper layer
/// is the scratch disk (/dev/vdb) or a tmpfs.
fn rootfs(sb: &Sandbox, storage: Storage) -> Result<Rootfs, Error> {
    let mut root = Rootfs::new();
    root.block_device = "/dev/vda".into();
    root.fstype = "erofs".into();
    root.overlay = true;
    if let Storage::Disk { .. } = storage {
        // An agent older than protocol 0.2 would ignore the upper device and use a
        // tmpfs without a word: refuse instead.
        if sb.agent_protocol.1 < 2 {
            return Err(Error::precondition(format!(
                "the guest image's agent speaks protocol {}.{}, which has no writable \
                 layer on disk: rebuild the guest image (make guest-image), or use \
                 --storage tmpfs",
                sb.agent_protocol.0, sb.agent_protocol.1
            )));
        }
        // The second disk (run_prepared attached it after the image).
        root.upper_device = "/dev/vdb".into();
        root.upper_fstype = crate::scratch::FSTYPE.into();
    }
    Ok(root)
}

async fn run_in(
    sb: &Sandbox,
    opts: &RunOptions,
    cdir: &ContainerDir,
    process: &serde_json::Value,
    user: &str,
    storage: Storage,
    t: &mut Timings,
) -> Result<i32, Error> {
    // The container is known to the agent by its name.
    let id = cdir.name.as_str();
    let pod = Pod::of(sb);
    let ts = Instant::now();
    let stdio = run_stdio(opts, cdir);
    let root = rootfs(sb, storage)?;
    pod.create_container(id, process, root, user, &stdio)
        .await?;
    let _raw = if opts.tty && tty::stdin_is_terminal() {
        tty::RawMode::enable().ok()
    } else {
        None
    };
    if opts.tty {
        resize(&pod, id).await;
    }
    pod.start(id).await?;
    t.container_start = ts.elapsed();
    let tr = Instant::now();
    if let Some(n) = &opts.detached {
        notify(n, &format!("started {}", cdir.name));
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut winch = signal(SignalKind::window_change())?;
    let waiting = pod.wait(id, "");
    tokio::pin!(waiting);
    let mut signals = 0;
    let status = loop {
        tokio::select! {
            r = &mut waiting => break r?.status,
            _ = sigint.recv() => { signals += 1; forward(&pod, id, 2, signals).await?; }
            _ = sigterm.recv() => { signals += 1; forward(&pod, id, 15, signals).await?; }
            _ = winch.recv(), if opts.tty => resize(&pod, id).await,
        }
    };
    // Bounded: a background process holding the output open must not hang husk.
    pod.drain_io(id, "").await;
    t.run = tr.elapsed();
    Ok(status)
}

/// Ctrl-C / SIGTERM: the first goes to the container, a second stops the VM.
async fn forward(pod: &Pod, id: &str, sig: u32, count: u32) -> Result<(), Error> {
    if count > 1 {
        return Err(Error::internal("interrupted twice: stopping the microVM"));
    }
    let _ = pod.kill(id, "", sig, false).await;
    Ok(())
}

/// Passes our terminal's size on.
pub(crate) async fn resize(pod: &Pod, id: &str) {
    if let Some((rows, cols)) = tty::window_size() {
        let _ = pod.resize_pty(id, "", rows.into(), cols.into()).await;
    }
}

/// What `husk ps` shows of a run (`info.json`); `id` is the container's id in the
/// agent (its name).
fn info(opts: &RunOptions, name: &str) -> serde_json::Value {
    let image = match &opts.image {
        ImageRef::OciDir { dir, tag } => format!(
            "oci:{}{}",
            dir.display(),
            tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
        ),
        ImageRef::OciArchive { file, tag } => format!(
            "oci-archive:{}{}",
            file.display(),
            tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
        ),
        ImageRef::Registry(r) => r.to_string(),
        ImageRef::Rootfs(d) => format!("rootfs:{}", d.display()),
    };
    serde_json::json!({
        "name": name,
        "id": name,
        "image": image,
        "command": opts.args,
        "created_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "detached": opts.detached.is_some(),
    })
}

/// Cleans up after killed `husk` processes: their VMs and folders
/// ([`reap_stale`]), then the scratch disks and networks whose container is gone.
pub fn reap(config: &Config) {
    reap_stale(&config.run_dir);
    crate::scratch::reap_orphans(&config.state_dir, &config.run_dir);
    crate::network::reap_orphans(&config.run_dir);
}

#[cfg(test)]
mod tests;
