//! One microVM with its agent: boot (husk-vmm + the guest image), readiness, the
//! agent connection, and shutdown. Shared by the `husk` CLI and (later) the shim.
//!
//! Everything a sandbox creates lives in its folder ([`SandboxDir`], crate::layout):
//! vm.json, vsock.sock (+ `_1025` for readiness), console.log, vmm.log, pid. husk-vmm
//! dies with the process that owns the sandbox (crate::spawner: PR_SET_PDEATHSIG from a
//! thread that lives as long as the process), so a killed `husk` cannot leave a VM
//! running; a folder left by a killed `husk` is removed by [`reap_stale`].

use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_agent_protocol::PROTOCOL_VERSION;
use husk_agent_protocol::agent::{
    DestroySandboxRequest, Route, UpdateInterfaceRequest, UpdateRoutesRequest,
};
use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_agent_protocol::client::{ClientError, Endpoint};
use husk_vmm::config::{
    BalloonConfig, BlockConfig, FsConfig, NetConfig, SerialConfig, SerialOutput, VmConfig,
    VsockConfig,
};
use husk_vmm::exit_status::VmmExit;

pub use crate::layout::SandboxDir;
use crate::procid::ProcId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

mod greet;
mod reap;
mod restore;

use greet::greet;
pub(crate) use reap::alive;
pub use reap::{reap_dir, reap_stale, remove_dir};

/// The guest kernel command line husk gives every VM (before `cmdline_extra`).
/// pci=off: the VM has no PCI (virtio-mmio devices come from ACPI), and a kernel with
/// AGP or early PCI quirks (Debian's generic one) otherwise scans config space port by
/// port: 18.4 s -> 12.1 s to agent-ready in the lab (docs/guest-image.md).
const CMDLINE: &str = "console=ttyS0 quiet panic=-1 pci=off HUSK_AGENT_LOG=warn";

/// Why a sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox folder {path}: {err}")]
    Dir { path: PathBuf, err: std::io::Error },
    #[error("start {vmm}: {err}")]
    Spawn { vmm: PathBuf, err: std::io::Error },
    #[error("the VM stopped before its agent was ready: {status}{console}")]
    VmExited { status: String, console: String },
    #[error("the VM stopped: {status}{console}")]
    VmStopped { status: String, console: String },
    #[error("the agent was not ready within {0:?}{1}")]
    NotReady(Duration, String),
    #[error("the agent's readiness message {0:?}: {1}")]
    BadReady(String, String),
    /// The VM did not come back from its template (crate::template): the template is
    /// discarded and the VM boots.
    #[error("the VM did not restore from its template: {0}")]
    NotRestored(String),
    #[error("agent: {0}")]
    Client(#[from] ClientError),
    #[error("agent: {0}")]
    Rpc(#[from] ttrpc::Error),
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("start {vmm} in its jail: {err}{log}")]
    JailStart {
        vmm: PathBuf,
        err: std::io::Error,
        log: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SandboxError {
    /// The library's kind of this failure (crate::error): a VM that stopped or an agent
    /// that went is Unavailable.
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            SandboxError::VmExited { .. }
            | SandboxError::NotRestored(_)
            | SandboxError::VmStopped { .. }
            | SandboxError::NotReady(..)
            | SandboxError::Client(_) => ErrorKind::Unavailable,
            SandboxError::Rpc(e) => crate::error::Error::agent(e.clone()).kind(),
            SandboxError::BadReady(..)
            | SandboxError::Jail(crate::jail::JailError::Cgroup(
                crate::jail::cgroup::CgroupError::NotMounted
                | crate::jail::cgroup::CgroupError::NoController { .. },
            )) => ErrorKind::FailedPrecondition,
            SandboxError::Share(_)
            | SandboxError::Jail(_)
            | SandboxError::JailStart { .. }
            | SandboxError::Dir { .. }
            | SandboxError::Spawn { .. }
            | SandboxError::Io(_) => ErrorKind::Internal,
        }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    /// The sandbox's folder (created; removed by shutdown).
    pub dir: SandboxDir,
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Block devices, in order: the guest sees /dev/vda, /dev/vdb, ...
    pub disks: Vec<Disk>,
    /// How long the agent may take to be ready.
    pub ready_timeout: Duration,
    /// Extra kernel command-line words.
    pub cmdline_extra: String,
    /// Host paths the guest sees over virtio-fs (crate::share; none: no virtiofsd).
    pub exports: Vec<crate::share::Export>,
    /// A pod's share instead: virtiofsd starts with no export and takes them while the
    /// VM runs ([`Sandbox::share`]; `exports` is then ignored).
    pub pod_share: bool,
    /// NICs: open taps husk-vmm inherits (crate::network); the caller keeps them open
    /// until `boot` returns.
    pub nics: Vec<Nic>,
    /// The guest's hostname.
    pub hostname: String,
    /// /etc/hosts, resolv.conf and hostname for the containers (agent protocol 0.4).
    pub name_files: Option<crate::network::files::NameFiles>,
    /// Run husk-vmm in a jail (crate::jail); `None` runs it as this process's user,
    /// unconfined but for its seccomp filter (`--no-jail`).
    pub jail: Option<crate::jail::JailSpec>,
    /// Restore the VM from this template folder (crate::template) instead of booting;
    /// if the restore fails, the template is discarded and the VM boots.
    pub template: Option<PathBuf>,
}

/// A guest NIC on an open tap.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The tap's fd in this process (passed on at the same number).
    pub fd: i32,
    pub mac: String,
    pub mtu: u32,
}

/// A disk image attached to the VM.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// When the phases of a boot ended, from the start of `boot`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimes {
    /// husk-vmm spawned.
    pub vmm_spawned: Duration,
    /// The agent's readiness connection arrived.
    pub agent_ready: Duration,
    /// The agent connection works (GuestDetails answered, CreateSandbox done).
    pub connected: Duration,
    /// The guest's own uptime when it reported ready (kernel boot + agent start).
    pub guest_uptime: Duration,
    /// The VM was restored from a template (crate::template), not booted.
    pub restored: bool,
}

/// A running sandbox.
pub struct Sandbox {
    pub id: String,
    pub dir: SandboxDir,
    pub endpoint: Endpoint,
    pub agent: AgentClient,
    pub times: BootTimes,
    /// The agent's protocol version (major, minor), from its readiness message.
    pub agent_protocol: (u32, u32),
    vmm: Option<Child>,
    /// The virtiofsd serving `exports`, while the VM runs.
    share: Option<crate::share::Server>,
    /// husk-vmm's jail (its cgroup and uid), released once husk-vmm is gone.
    jail: Option<crate::jail::Jail>,
    /// In a VM restored from a template: each NIC's MAC and the template's MAC its
    /// guest interface still has until [`Sandbox::configure_network`].
    template_macs: Vec<(String, String)>,
}

fn now_unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(0))
        .unwrap_or(0)
}

/// husk-vmm's exit status in words (docs/vmm.md lists the codes).
pub(crate) fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    let Some(code) = st.code() else {
        return format!("husk-vmm killed by signal {}", st.signal().unwrap_or(0));
    };
    let why = VmmExit::from_code(code).map_or("unknown status", VmmExit::describe);
    format!("husk-vmm exited with {code} ({why})")
}

/// Most bytes read from the end of a log for an error message: the guest decides what
/// it prints, so a log is never read whole.
const LOG_TAIL_BYTES: u64 = 16 << 10;

/// The last [`LOG_TAIL_BYTES`] of a file, as text; empty when it cannot be read.
pub(crate) fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(LOG_TAIL_BYTES).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last lines of the guest's console, for error messages.
pub(crate) fn console_tail(dir: &Path) -> String {
    let dir = SandboxDir::new(dir);
    let text = read_tail(&dir.console_log());
    let vmm = read_tail(&dir.vmm_log());
    let tail = |t: &str| {
        t.lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut s = String::new();
    if !text.trim().is_empty() {
        s += &format!("\n--- guest console (last lines)\n{}", tail(&text));
    }
    if !vmm.trim().is_empty() {
        s += &format!("\n--- husk-vmm\n{}", tail(&vmm));
    }
    s
}

fn ctx(secs: i64) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(secs * 1_000_000_000)
}

impl SandboxSpec {
    /// A sandbox of `guest` in `dir` run by the husk-vmm at `vmm`: 1 vCPU, 256 MiB, no
    /// disk, 300 s for the agent to be ready (change the fields for more).
    pub fn new(
        id: &str,
        dir: impl Into<SandboxDir>,
        vmm: PathBuf,
        guest: &crate::guest::GuestImage,
    ) -> SandboxSpec {
        SandboxSpec {
            id: id.to_string(),
            dir: dir.into(),
            vmm,
            kernel: guest.kernel.clone(),
            initramfs: guest.initramfs.clone(),
            vcpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            ready_timeout: Duration::from_secs(300),
            cmdline_extra: String::new(),
            exports: Vec::new(),
            pod_share: false,
            nics: Vec::new(),
            hostname: "husk".into(),
            name_files: None,
            jail: None,
            template: None,
        }
    }

    /// The VM husk-vmm is to run (its console log capped at the default 1 MiB).
    pub fn vm_config(&self) -> VmConfig {
        VmConfig {
            initramfs: Some(self.initramfs.clone()),
            cmdline: format!("{CMDLINE} {}", self.cmdline_extra)
                .trim()
                .to_string(),
            vcpus: self.vcpus,
            memory_mib: u64::from(self.memory_mib),
            serial: SerialConfig(SerialOutput::file(self.dir.console_log())),
            block: self
                .disks
                .iter()
                .map(|d| BlockConfig {
                    path: d.path.clone(),
                    read_only: d.read_only,
                })
                .collect(),
            vsock: Some(VsockConfig {
                cid: 3,
                uds: self.dir.vsock(),
            }),
            rng: true,
            // Free page reporting: memory the guest frees goes back to the host, so a
            // large ceiling costs only the working set (docs/cli.md, "Memory").
            balloon: Some(BalloonConfig {
                free_page_reporting: true,
            }),
            fs: if !self.has_share() {
                Vec::new()
            } else {
                vec![FsConfig {
                    tag: crate::share::TAG.into(),
                    socket: self.dir.virtiofsd_socket(),
                }]
            },
            net: self
                .nics
                .iter()
                .map(|n| NetConfig {
                    tap: None,
                    fd: Some(n.fd),
                    mac: Some(n.mac.clone()),
                    mtu: Some(n.mtu),
                })
                .collect(),
            ..VmConfig::new(self.kernel.clone())
        }
    }
}

impl SandboxSpec {
    /// Whether the VM has the virtio-fs share.
    pub fn has_share(&self) -> bool {
        self.pod_share || !self.exports.is_empty()
    }
}

impl Sandbox {
    /// The pod's share (crate::share::Server::add), when booted with `pod_share`.
    pub fn share(&self) -> Option<&crate::share::Server> {
        self.share.as_ref()
    }

    /// Boots the VM (or restores it from `spec.template`) and waits for its agent. A
    /// template that does not restore is discarded, and the VM boots instead.
    pub async fn boot(spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        let Some(template) = &spec.template else {
            return Sandbox::start(spec).await;
        };
        match Sandbox::start(spec).await {
            // Only a failure of the restore itself: any other is the VM's and would
            // happen after a boot too.
            Err(e @ SandboxError::NotRestored(_)) => {
                tracing::warn!(error = %e, template = %template.display(), "restore failed; booting");
                eprintln!("husk: warning: the VM did not restore from its template ({e}); booting");
                crate::template::discard(template);
                let boot = SandboxSpec {
                    template: None,
                    ..spec.clone()
                };
                Sandbox::start(&boot).await
            }
            other => other,
        }
    }

    async fn start(spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        let t0 = Instant::now();
        let dir_err = |err| SandboxError::Dir {
            path: spec.dir.to_path_buf(),
            err,
        };
        std::fs::create_dir_all(&spec.dir).map_err(dir_err)?;
        let vm_json = spec.dir.vm_config();
        let config = serde_json::to_vec_pretty(&spec.vm_config())
            .map_err(|e| dir_err(std::io::Error::other(e)))?;
        std::fs::write(&vm_json, config).map_err(dir_err)?;
        let uds = spec.dir.vsock();
        let ready_path = spec.dir.ready_socket();
        let _ = std::fs::remove_file(&ready_path);
        let ready = tokio::net::UnixListener::bind(&ready_path).map_err(dir_err)?;
        let jail = match spec.jail.as_ref().map(|j| jail_for(spec, j)).transpose() {
            Ok(j) => j,
            Err(e) => {
                remove_dir(&spec.dir);
                return Err(e);
            }
        };
        // The share's server first: husk-vmm connects to it as it starts.
        let share = if spec.pod_share {
            Some(crate::share::Server::start_pod(&spec.dir).await)
        } else if spec.exports.is_empty() {
            None
        } else {
            Some(crate::share::Server::start(&spec.dir, &spec.exports).await)
        };
        let share = match share.transpose() {
            Ok(s) => s,
            Err(e) => {
                drop(jail);
                remove_dir(&spec.dir);
                return Err(e.into());
            }
        };
        let log = match std::fs::File::create(spec.dir.vmm_log()) {
            Ok(f) => f,
            Err(e) => {
                drop(share);
                drop(jail);
                remove_dir(&spec.dir);
                return Err(dir_err(e));
            }
        };
        let vmm_path = jail
            .as_ref()
            .map_or(spec.vmm.as_path(), |j| j.vmm.as_path());
        let mut cmd = Command::new(vmm_path);
        cmd.arg("--config").arg(&vm_json);
        if let Some(t) = &spec.template {
            cmd.arg("--restore").arg(t);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let tap_fds: Vec<i32> = spec.nics.iter().map(|n| n.fd).collect();
        // SAFETY: prctl and fcntl in the forked child before exec; async-signal-safe, no
        // memory shared with the parent is touched (the fd list was copied before fork).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The taps stay open across exec (husk-vmm takes them by number).
                for fd in &tap_fds {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        if let Some(j) = &jail {
            // husk-vmm (its uid) reaches the sockets the runtime and virtiofsd listen on.
            let granted = j.grant(&ready_path).and_then(|()| match &share {
                Some(s) => j.grant(&s.socket),
                None => Ok(()),
            });
            if let Err(e) = granted.and_then(|()| j.apply(&mut cmd)) {
                drop((share, jail));
                let _ = std::fs::remove_dir_all(&spec.dir);
                return Err(e.into());
            }
        }
        // From the process-long spawner thread: PDEATHSIG follows the forking thread.
        let child = match crate::spawner::spawn(cmd) {
            Ok(c) => c,
            Err(err) => {
                let e = if jail.is_some() {
                    // The failed step is in vmm.log (crate::jail::child).
                    SandboxError::JailStart {
                        vmm: spec.vmm.clone(),
                        err,
                        log: console_tail(&spec.dir),
                    }
                } else {
                    SandboxError::Spawn {
                        vmm: spec.vmm.clone(),
                        err,
                    }
                };
                drop((share, jail));
                remove_dir(&spec.dir);
                return Err(e);
            }
        };
        // husk-vmm and its owner, each as "PID START" (crate::procid).
        let vmm_id = i32::try_from(child.id())
            .ok()
            .and_then(ProcId::of)
            .map(|p| p.to_record())
            .unwrap_or_else(|| child.id().to_string());
        let _ = std::fs::write(
            spec.dir.pid(),
            format!("{vmm_id}\n{}\n", ProcId::me().to_record()),
        );
        let mut child = child;
        let mut times = BootTimes {
            vmm_spawned: t0.elapsed(),
            restored: spec.template.is_some(),
            ..BootTimes::default()
        };
        let endpoint = Endpoint::HybridVsock(uds);
        let waited = match spec.template {
            Some(_) => restore::wait_agent(&mut child, spec, &endpoint, t0, &mut times).await,
            None => wait_ready(&mut child, spec, &ready, &endpoint, t0, &mut times).await,
        };
        match waited {
            Ok((agent, agent_protocol)) => {
                let _ = std::fs::remove_file(&ready_path);
                Ok(Sandbox {
                    id: spec.id.clone(),
                    dir: spec.dir.clone(),
                    endpoint,
                    agent,
                    times,
                    agent_protocol,
                    vmm: Some(child),
                    share,
                    jail,
                    template_macs: match spec.template {
                        Some(_) => spec
                            .nics
                            .iter()
                            .enumerate()
                            .map(|(i, n)| (n.mac.clone(), crate::template::nic_mac(i)))
                            .collect(),
                        None => Vec::new(),
                    },
                })
            }
            Err(e) => {
                kill_and_reap(&mut child);
                drop((share, jail));
                remove_dir(&spec.dir);
                Err(e)
            }
        }
    }

    /// Configures a guest NIC (found by its MAC) and its routes (agent protocol 0.4). In
    /// a VM restored from a template the guest NIC still has the template's MAC: the
    /// request names it as `current_mac` (protocol 0.6), and the NIC takes its own.
    pub async fn configure_network(
        &self,
        g: &crate::network::GuestNetwork,
    ) -> Result<(), SandboxError> {
        let mut i = UpdateInterfaceRequest::new();
        i.name = g.ifname.clone();
        i.mac = g.mac.clone();
        if let Some((_, template)) = self
            .template_macs
            .iter()
            .find(|(mac, _)| mac.eq_ignore_ascii_case(&g.mac))
        {
            i.current_mac = template.clone();
        }
        i.mtu = g.mtu;
        i.addresses = g.addresses.clone();
        self.agent.update_interface(ctx(30), &i).await?;
        let mut r = UpdateRoutesRequest::new();
        r.routes = g
            .routes
            .iter()
            .map(|(dst, gw)| {
                let mut rt = Route::new();
                rt.destination = dst.clone();
                rt.gateway = gw.clone();
                rt.device = g.ifname.clone();
                rt
            })
            .collect();
        self.agent.update_routes(ctx(30), &r).await?;
        Ok(())
    }

    /// husk-vmm's pid while it runs; in a jail, its keeper's (`husk-jail`, which
    /// husk-vmm dies with and whose exit status is husk-vmm's; crate::jail::child).
    pub fn vmm_pid(&self) -> Option<u32> {
        self.vmm.as_ref().map(Child::id)
    }

    /// Asks the agent to stop everything and power off; waits for husk-vmm (bounded),
    /// kills it if needed, removes the sandbox folder. Returns husk-vmm's exit code.
    pub async fn shutdown(mut self) -> Option<i32> {
        let _ = tokio::time::timeout(
            Duration::from_secs(15),
            self.agent
                .destroy_sandbox(ctx(15), &DestroySandboxRequest::new()),
        )
        .await;
        let mut code = None;
        if let Some(mut child) = self.vmm.take() {
            match wait_exit(&mut child, Duration::from_secs(10)).await {
                Some(st) => code = st.code(),
                None => kill_and_reap(&mut child),
            }
        }
        if let Some(mut s) = self.share.take() {
            s.stop();
        }
        self.jail.take();
        remove_dir(&self.dir);
        code
    }

    /// When husk-vmm has exited (or does within `grace`: a lost agent connection comes
    /// just before), why, with the console's last lines; `None` while it runs.
    pub async fn stopped(&mut self, grace: Duration) -> Option<SandboxError> {
        let st = wait_exit(self.vmm.as_mut()?, grace).await?;
        Some(SandboxError::VmStopped {
            status: describe_exit(st),
            console: console_tail(&self.dir),
        })
    }

    /// Stops the VM at once (SIGKILL) and removes the folder.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.vmm.take() {
            kill_and_reap(&mut c);
        }
        if let Some(mut s) = self.share.take() {
            s.stop();
        }
        self.jail.take();
        remove_dir(&self.dir);
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .field("vmm", &self.vmm_pid())
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.vmm.is_some() {
            self.kill();
        }
    }
}

/// The child's exit status once it has exited, waiting up to `grace`; `None` if it still
/// runs then (or cannot be waited for).
async fn wait_exit(c: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => return None,
        }
    }
}

/// SIGKILL, then reap for at most a few seconds: a VMM stuck in the kernel (a
/// nested-virtualisation hang) must not hang husk too; it is reaped by init later.
fn kill_and_reap(c: &mut Child) {
    let _ = c.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) | Err(_) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(pid = c.id(), "husk-vmm did not die after SIGKILL");
}

async fn wait_ready(
    child: &mut Child,
    spec: &SandboxSpec,
    ready: &tokio::net::UnixListener,
    endpoint: &Endpoint,
    t0: Instant,
    times: &mut BootTimes,
) -> Result<(AgentClient, (u32, u32)), SandboxError> {
    let (dir, timeout) = (spec.dir.path(), spec.ready_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let conn = loop {
        tokio::select! {
            r = ready.accept() => break r?.0,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(SandboxError::VmExited { status: describe_exit(status), console: console_tail(dir) });
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(SandboxError::NotReady(timeout, console_tail(dir)));
                }
            }
        }
    };
    times.agent_ready = t0.elapsed();
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(conn.take(4096));
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .map_err(|_| SandboxError::BadReady(String::new(), "no message".into()))??;
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| SandboxError::BadReady(line.clone(), e.to_string()))?;
    let major = v["protocol"][0].as_u64().unwrap_or(u64::MAX);
    if major != u64::from(PROTOCOL_VERSION.0) {
        return Err(SandboxError::BadReady(
            line,
            format!("protocol {major}, this host speaks {}", PROTOCOL_VERSION.0),
        ));
    }
    let minor = v["protocol"][1]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(0);
    times.guest_uptime = Duration::from_millis(v["uptime_ms"].as_u64().unwrap_or(0));
    let agent = endpoint.agent().await?;
    greet(&agent, spec, minor, &line).await?;
    times.connected = t0.elapsed();
    Ok((agent, (PROTOCOL_VERSION.0, minor)))
}

/// Prepares `spec`'s jail: the files vm.json names, the console log made for
/// husk-vmm's uid.
fn jail_for(
    spec: &SandboxSpec,
    j: &crate::jail::JailSpec,
) -> Result<crate::jail::Jail, SandboxError> {
    let template_files: Vec<PathBuf> = spec
        .template
        .iter()
        .flat_map(|t| [t.join("state"), t.join("memory")])
        .collect();
    let files = crate::jail::Files {
        vm_dir: spec.dir.path(),
        vmm: &spec.vmm,
        read_only: [&spec.kernel, &spec.initramfs]
            .into_iter()
            .chain(&template_files)
            .map(PathBuf::as_path)
            .chain(
                spec.disks
                    .iter()
                    .filter(|d| d.read_only)
                    .map(|d| d.path.as_path()),
            )
            .collect(),
        writable: spec
            .disks
            .iter()
            .filter(|d| !d.read_only)
            .map(|d| d.path.as_path())
            .collect(),
        memory_mib: spec.memory_mib,
    };
    let jail = crate::jail::Jail::prepare(j, &files)?;
    let console = spec.dir.console_log();
    std::fs::File::create(&console).map_err(|err| SandboxError::Dir {
        path: console.clone(),
        err,
    })?;
    jail.grant(&console)?;
    Ok(jail)
}

/// Writes a line to stderr when `enabled` (progress for long steps).
pub fn progress(enabled: bool, msg: &str) {
    if enabled {
        let _ = writeln!(std::io::stderr(), "husk: {msg}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::describe_exit;

    #[test]
    fn exit_statuses_in_words() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "husk-vmm exited with 1 (the guest crashed)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(4 << 8)),
            "husk-vmm exited with 4 (stopped by the host)"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "husk-vmm killed by signal 9"
        );
    }
}
