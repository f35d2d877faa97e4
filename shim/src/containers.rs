//! Detached containers (`husk run -d`) and the commands that act on them: `husk ps`,
//! `exec`, `kill`, `rm`, `logs`. A detached run is a background `husk` process (the
//! owner) that keeps the microVM and writes the container's output to log files in
//! its folder; the other commands talk to the agent through the folder's vsock socket.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_agent_protocol::agent::{ExecProcessRequest, ProcessRequest, SignalProcessRequest, Stdio};
use husk_agent_protocol::client::{Endpoint, StdioKind};
use husk_agent_protocol::{spec, validate};

use crate::config::Config;
use crate::procid::ProcId;
use crate::run::{ContainerDir, RunError, rpc_msg, spawn_stdin_pump};

/// A container as `husk ps` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub status: String,
    pub image: String,
    pub command: String,
}

/// The recorded owner process (pid and start time).
fn owner(dir: &Path) -> Option<ProcId> {
    ProcId::parse(&std::fs::read_to_string(dir.join("owner")).ok()?)
}

fn alive(p: ProcId) -> bool {
    p.alive()
}

fn exit_status(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(dir.join("exit"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Every container under the run folder (after cleaning up stale ones).
pub fn list(config: &Config) -> Vec<Listed> {
    crate::run::reap(config);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&config.run_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = e.path();
        let info: serde_json::Value = std::fs::read(dir.join("info.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let status = match exit_status(&dir) {
            Some(s) => format!("exited ({s})"),
            None if owner(&dir).is_some_and(alive) => {
                if dir.join("vm/vsock.sock").exists() {
                    "running".into()
                } else {
                    "starting".into()
                }
            }
            None => continue,
        };
        out.push(Listed {
            name: e.file_name().to_string_lossy().into_owned(),
            status,
            image: info["image"].as_str().unwrap_or("").to_string(),
            command: info["command"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn running(config: &Config, name: &str) -> Result<ContainerDir, RunError> {
    validate::id("NAME", name).map_err(|e| RunError::Usage(e.to_string()))?;
    crate::run::reap(config);
    let c = ContainerDir::new(config, name);
    if !c.path.is_dir() {
        return Err(RunError::Usage(format!(
            "{name}: no such container (husk ps lists them)"
        )));
    }
    if exit_status(&c.path).is_some() || !c.vm().join("vsock.sock").exists() {
        return Err(RunError::Usage(format!("{name}: not running")));
    }
    Ok(c)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(60_000_000_000)
}

fn rpc(e: ttrpc::Error) -> RunError {
    RunError::Agent(rpc_msg(e))
}

/// Parses a signal: a number, or a name with or without SIG.
pub fn parse_signal(s: &str) -> Result<u32, RunError> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as u32)
        .map_err(|_| RunError::Usage(format!("signal {s:?}: not a signal name or number")))
}

/// `husk kill NAME [SIGNAL]`.
pub async fn kill(config: &Config, name: &str, signal: u32) -> Result<(), RunError> {
    let c = running(config, name)?;
    let agent = Endpoint::HybridVsock(c.vm().join("vsock.sock"))
        .agent()
        .await
        .map_err(|e| RunError::Agent(e.to_string()))?;
    let mut s = SignalProcessRequest::new();
    s.container_id = "main".into();
    s.signal = signal;
    agent.signal_process(ctx(), &s).await.map_err(rpc)?;
    Ok(())
}

/// `husk exec NAME CMD...`: runs a process in a running container, stdio on ours.
pub async fn exec(
    config: &Config,
    name: &str,
    args: &[String],
    interactive: bool,
    env: &[String],
    workdir: Option<&str>,
    user: Option<&str>,
) -> Result<i32, RunError> {
    let c = running(config, name)?;
    if args.is_empty() {
        return Err(RunError::Usage("exec: no command".into()));
    }
    let ep = Endpoint::HybridVsock(c.vm().join("vsock.sock"));
    let agent = ep
        .agent()
        .await
        .map_err(|e| RunError::Agent(e.to_string()))?;
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = spec::process(&argv);
    if let Some(env_arr) = p["env"].as_array_mut() {
        for e in env {
            if !e.contains('=') {
                return Err(RunError::Usage(format!("-e {e:?}: expected KEY=VALUE")));
            }
            env_arr.push(serde_json::json!(e));
        }
    }
    if let Some(w) = workdir {
        p["cwd"] = serde_json::json!(w);
    }
    let open = |kind| {
        let ep = ep.clone();
        let id = exec_id.clone();
        async move {
            ep.stdio("main", &id, kind)
                .await
                .map_err(|e| RunError::Agent(e.to_string()))
        }
    };
    let so = open(StdioKind::Stdout).await?;
    let se = open(StdioKind::Stderr).await?;
    let si = if interactive {
        Some(open(StdioKind::Stdin).await?)
    } else {
        None
    };
    let mut req = ExecProcessRequest::new();
    req.container_id = "main".into();
    req.exec_id = exec_id.clone();
    req.process_json = p.to_string().into_bytes();
    let mut io = Stdio::new();
    io.stdout = true;
    io.stderr = true;
    io.stdin = si.is_some();
    req.stdio = Some(io).into();
    req.user = user.unwrap_or("").to_string();
    if let Err(e) = agent.exec_process(ctx(), &req).await {
        let e = rpc(e);
        if e.to_string().contains("not found") {
            return Err(RunError::CommandNotFound(e.to_string()));
        }
        return Err(e);
    }
    if let Some(si) = si {
        spawn_stdin_pump(si);
    }
    // No terminal in the container: its output may not drive ours (crate::sanitize).
    let out = tokio::spawn(crate::sanitize::copy(
        so,
        tokio::io::stdout(),
        crate::tty::stdout_is_terminal(),
    ));
    let err = tokio::spawn(crate::sanitize::copy(
        se,
        tokio::io::stderr(),
        crate::tty::stderr_is_terminal(),
    ));
    let mut w = ProcessRequest::new();
    w.container_id = "main".into();
    w.exec_id = exec_id;
    let status = agent
        .wait_process(ttrpc::context::with_timeout(0), &w)
        .await
        .map_err(rpc)?
        .exit_status;
    crate::sanitize::drain(out).await;
    crate::sanitize::drain(err).await;
    Ok(status)
}

/// `husk rm [-f] NAME`: a finished container's folder goes; a running one only with
/// force (killed first; its owner then stops the VM and exits).
pub async fn rm(config: &Config, name: &str, force: bool) -> Result<(), RunError> {
    validate::id("NAME", name).map_err(|e| RunError::Usage(e.to_string()))?;
    crate::run::reap(config);
    let c = ContainerDir::new(config, name);
    if !c.path.is_dir() {
        return Err(RunError::Usage(format!("{name}: no such container")));
    }
    let owner_alive = owner(&c.path).is_some_and(alive);
    if exit_status(&c.path).is_none() && owner_alive {
        if !force {
            return Err(RunError::Usage(format!(
                "{name}: still running (husk kill {name}, or husk rm -f {name})"
            )));
        }
        let _ = kill(config, name, 9).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while owner(&c.path).is_some_and(alive) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(p) = owner(&c.path).filter(|p| p.alive()) {
            // The owner did not stop: end it (its VM dies with it: PDEATHSIG); only
            // the recorded process, never a pid reused since.
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(100)).await;
            crate::run::reap(config);
        }
    }
    c.remove();
    // Its network, if its owner died without removing it (killed above).
    crate::network::reap_orphans(&config.run_dir);
    Ok(())
}

/// `husk logs NAME`: a detached container's output so far.
pub fn logs(config: &Config, name: &str) -> Result<(), RunError> {
    validate::id("NAME", name).map_err(|e| RunError::Usage(e.to_string()))?;
    let c = ContainerDir::new(config, name);
    if !c.path.is_dir() {
        return Err(RunError::Usage(format!("{name}: no such container")));
    }
    // To a terminal, stripped of control sequences (crate::sanitize).
    let copy = |file: &str, to: &mut dyn std::io::Write, terminal: bool| {
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(c.path.join(file)) else {
            return;
        };
        let (mut s, mut buf, mut clean) = (
            crate::sanitize::Sanitizer::default(),
            vec![0u8; 64 << 10],
            Vec::new(),
        );
        while let Ok(n @ 1..) = f.read(&mut buf) {
            clean.clear();
            let chunk = if terminal {
                s.filter(&buf[..n], &mut clean);
                &clean[..]
            } else {
                &buf[..n]
            };
            if to.write_all(chunk).is_err() {
                return;
            }
        }
    };
    copy(
        "stdout.log",
        &mut std::io::stdout(),
        crate::tty::stdout_is_terminal(),
    );
    copy(
        "stderr.log",
        &mut std::io::stderr(),
        crate::tty::stderr_is_terminal(),
    );
    Ok(())
}
