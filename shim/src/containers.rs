//! Detached containers (`husk run -d`) and the commands that act on them: `husk ps`,
//! `exec`, `kill`, `rm`, `logs`. A detached run is a background `husk` process (the
//! owner) that keeps the microVM and writes the container's output to log files in
//! its folder; the other commands talk to the agent through the folder's vsock socket.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_agent_protocol::client::Endpoint;
use husk_agent_protocol::{spec, validate};

use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::layout::ContainerDir;
use crate::pod::Pod;
use crate::procid::ProcId;
use crate::stdio::{Input, Output, ProcessStdio};

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
    ProcId::parse(&std::fs::read_to_string(crate::layout::owner_of(dir)).ok()?)
}

fn alive(p: ProcId) -> bool {
    p.alive()
}

fn exit_status(dir: &Path) -> Option<i32> {
    std::fs::read_to_string(ContainerDir::new(dir, dir, "").exit())
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
        let name = e.file_name().to_string_lossy().into_owned();
        let c = ContainerDir::of(config, &name);
        let info: serde_json::Value = std::fs::read(c.info())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let status = match exit_status(&dir) {
            Some(s) => format!("exited ({s})"),
            None if owner(&dir).is_some_and(alive) => {
                if c.vm().vsock().exists() {
                    "running".into()
                } else {
                    "starting".into()
                }
            }
            None => continue,
        };
        out.push(Listed {
            name,
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

fn running(config: &Config, name: &str) -> Result<ContainerDir, Error> {
    validate::id("NAME", name).map_err(|e| Error::invalid(e.to_string()))?;
    crate::run::reap(config);
    let c = ContainerDir::of(config, name);
    if !c.path.is_dir() {
        return Err(Error::not_found(format!(
            "{name}: no such container (husk ps lists them)"
        )));
    }
    if exit_status(&c.path).is_some() || !c.vm().vsock().exists() {
        return Err(Error::precondition(format!("{name}: not running")));
    }
    Ok(c)
}

/// The running container of folder `c`: its pod (the agent of its VM) and its id there
/// (`id` of info.json; "main" for a run started by an older husk).
async fn attach(c: &ContainerDir) -> Result<(Pod, String), Error> {
    let info: serde_json::Value = std::fs::read(c.info())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let id = info["id"].as_str().unwrap_or("main").to_string();
    let pod = Pod::connect(Endpoint::HybridVsock(c.vm().vsock())).await?;
    Ok((pod, id))
}

/// Parses a signal: a number, or a name with or without SIG.
pub fn parse_signal(s: &str) -> Result<u32, Error> {
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
        .map_err(|_| Error::invalid(format!("signal {s:?}: not a signal name or number")))
}

/// `husk kill NAME [SIGNAL]`.
pub async fn kill(config: &Config, name: &str, signal: u32) -> Result<(), Error> {
    let c = running(config, name)?;
    let (pod, id) = attach(&c).await?;
    pod.kill(&id, "", signal, false).await
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
) -> Result<i32, Error> {
    let c = running(config, name)?;
    if args.is_empty() {
        return Err(Error::invalid("exec: no command"));
    }
    let (pod, id) = attach(&c).await?;
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
                return Err(Error::invalid(format!("-e {e:?}: expected KEY=VALUE")));
            }
            env_arr.push(serde_json::json!(e));
        }
    }
    if let Some(w) = workdir {
        p["cwd"] = serde_json::json!(w);
    }
    // No terminal in the container: its output may not drive ours (crate::sanitize).
    let stdio = ProcessStdio {
        stdin: interactive.then_some(Input::Stdin),
        stdout: Some(Output::Stdout {
            sanitize: crate::tty::stdout_is_terminal(),
        }),
        stderr: Some(Output::Stderr {
            sanitize: crate::tty::stderr_is_terminal(),
        }),
        terminal: false,
        namespace: None,
    };
    pod.exec(&id, &exec_id, &p, user.unwrap_or(""), &stdio)
        .await?;
    let status = pod.wait(&id, &exec_id).await?.status;
    pod.drain_io(&id, &exec_id).await;
    Ok(status)
}

/// `husk rm [-f] NAME`: a finished container's folder goes; a running one only with
/// force (killed first; its owner then stops the VM and exits).
pub async fn rm(config: &Config, name: &str, force: bool) -> Result<(), Error> {
    validate::id("NAME", name).map_err(|e| Error::invalid(e.to_string()))?;
    crate::run::reap(config);
    let c = ContainerDir::of(config, name);
    if !c.path.is_dir() {
        return Err(Error::not_found(format!("{name}: no such container")));
    }
    let owner_alive = owner(&c.path).is_some_and(alive);
    if exit_status(&c.path).is_none() && owner_alive {
        if !force {
            return Err(Error::msg(
                ErrorKind::FailedPrecondition,
                format!("{name}: still running (husk kill {name}, or husk rm -f {name})"),
            ));
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
pub fn logs(config: &Config, name: &str) -> Result<(), Error> {
    validate::id("NAME", name).map_err(|e| Error::invalid(e.to_string()))?;
    let c = ContainerDir::of(config, name);
    if !c.path.is_dir() {
        return Err(Error::not_found(format!("{name}: no such container")));
    }
    // To a terminal, stripped of control sequences (crate::sanitize).
    let copy = |file: std::path::PathBuf, to: &mut dyn std::io::Write, terminal: bool| {
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(file) else {
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
        c.stdout_log(),
        &mut std::io::stdout(),
        crate::tty::stdout_is_terminal(),
    );
    copy(
        c.stderr_log(),
        &mut std::io::stderr(),
        crate::tty::stderr_is_terminal(),
    );
    Ok(())
}
