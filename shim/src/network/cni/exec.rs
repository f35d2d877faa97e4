//! Running a list's plugins: ADD in order, DEL in reverse.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use super::super::ports::PortMapping;
use super::{CniError, CniResult, MAX_OUTPUT, NetworkList, PLUGIN_TIMEOUT};

/// Where and for whom plugins run.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub plugin_dir: &'a Path,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub ports: &'a [PortMapping],
}

/// One plugin's configuration for a call: its entry, the list's name and version,
/// `prevResult`, and the runtime configuration of the capabilities it declares.
pub fn plugin_config(
    list: &Value,
    plugin: &Value,
    prev: Option<&Value>,
    ports: &[PortMapping],
) -> Value {
    let mut c = plugin.clone();
    if let Some(o) = c.as_object_mut() {
        o.insert("name".into(), list["name"].clone());
        o.insert("cniVersion".into(), list["cniVersion"].clone());
        if let Some(p) = prev {
            o.insert("prevResult".into(), p.clone());
        }
        if plugin["capabilities"]["portMappings"].as_bool() == Some(true) {
            o.insert("runtimeConfig".into(), json!({"portMappings": ports}));
        }
    }
    c
}

/// The message of a failed plugin: its error JSON's `msg` and `details` (and code), else
/// what it printed.
pub fn error_message(code: Option<i32>, stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = v["msg"].as_str()
    {
        let mut s = msg.to_string();
        if let Some(d) = v["details"].as_str().filter(|d| !d.is_empty()) {
            s += &format!(": {d}");
        }
        if let Some(c) = v["code"].as_u64() {
            s += &format!(" (CNI error code {c})");
        }
        return s;
    }
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    let text = format!("{} {}", out.trim(), err.trim());
    let text: String = text.trim().chars().take(2000).collect();
    match code {
        Some(c) => format!("exit status {c}: {text}"),
        None => format!("killed: {text}"),
    }
}

/// Runs one plugin; its stdout on success.
fn exec(
    inv: &Invocation<'_>,
    command: &'static str,
    network: &str,
    plugin: &str,
    config: &Value,
) -> Result<Value, CniError> {
    let path = inv.plugin_dir.join(plugin);
    if !path.is_file() {
        return Err(CniError::NoPlugin {
            plugin: plugin.to_string(),
            network: network.to_string(),
            dir: inv.plugin_dir.to_path_buf(),
        });
    }
    let exec_err = |source| CniError::Exec {
        plugin: plugin.to_string(),
        command,
        network: network.to_string(),
        source,
    };
    // Plugins run iptables, ip, ...: the sbin folders must be on PATH.
    let path_env = format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin",
        std::env::var("PATH").unwrap_or_default()
    );
    let t0 = Instant::now();
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.plugin_dir)
        .env("CNI_ARGS", "")
        .env("PATH", path_env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(exec_err)?;
    let input = config.to_string();
    let mut stdin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(o) = child.stdout.take() {
            let e = child.stderr.take();
            let h = std::thread::spawn(move || {
                let mut err = Vec::new();
                if let Some(e) = e {
                    let _ = e.take(MAX_OUTPUT).read_to_end(&mut err);
                }
                err
            });
            let _ = o.take(MAX_OUTPUT).read_to_end(&mut out);
            err = h.join().unwrap_or_default();
        }
        let st = child.wait();
        let _ = tx.send((st, out, err));
    });
    let (st, out, err) = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(r) => r,
        Err(_) => {
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(CniError::Plugin {
                plugin: plugin.to_string(),
                command,
                network: network.to_string(),
                message: format!("no answer within {PLUGIN_TIMEOUT:?} (killed)"),
            });
        }
    };
    let _ = writer.join();
    let st = st.map_err(exec_err)?;
    tracing::debug!(
        plugin,
        command,
        network,
        container = inv.container_id,
        ms = t0.elapsed().as_millis() as u64,
        ok = st.success(),
        "CNI plugin ran"
    );
    if !st.success() {
        return Err(CniError::Plugin {
            plugin: plugin.to_string(),
            command,
            network: network.to_string(),
            message: error_message(st.code(), &out, &err),
        });
    }
    if command == "DEL" || out.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
        plugin: plugin.to_string(),
        network: network.to_string(),
        message: format!("not JSON: {e}"),
    })
}

fn plugins(list: &NetworkList) -> Vec<(String, Value)> {
    list.config["plugins"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["type"].as_str().unwrap_or_default().to_string(),
                        p.clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// ADD through the list; the final result (raw JSON, as DEL needs it back).
pub fn add(list: &NetworkList, inv: &Invocation<'_>) -> Result<Value, CniError> {
    if !inv.plugin_dir.is_dir() {
        return Err(CniError::NoPluginDir(inv.plugin_dir.to_path_buf()));
    }
    // Every plugin must be there before the first runs (nothing half made).
    for (t, _) in plugins(list) {
        if !inv.plugin_dir.join(&t).is_file() {
            return Err(CniError::NoPlugin {
                plugin: t,
                network: list.name.clone(),
                dir: inv.plugin_dir.to_path_buf(),
            });
        }
    }
    let mut prev: Option<Value> = None;
    for (t, p) in plugins(list) {
        let c = plugin_config(&list.config, &p, prev.as_ref(), inv.ports);
        let r = exec(inv, "ADD", &list.name, &t, &c)?;
        // A plugin that returns nothing passes the previous result on.
        if !r.is_null() {
            prev = Some(r);
        }
    }
    let result = prev.unwrap_or(Value::Null);
    CniResult::parse(&result).map_err(|message| CniError::BadResult {
        plugin: list.plugin_types().last().cloned().unwrap_or_default(),
        network: list.name.clone(),
        message,
    })?;
    Ok(result)
}

/// DEL through the list, in reverse, with the ADD result (if any) as `prevResult`. Every
/// plugin is called even when one fails; the failures are returned.
pub fn del(list: &NetworkList, inv: &Invocation<'_>, result: Option<&Value>) -> Vec<CniError> {
    let mut errors = Vec::new();
    for (t, p) in plugins(list).into_iter().rev() {
        let c = plugin_config(&list.config, &p, result.filter(|r| !r.is_null()), inv.ports);
        if let Err(e) = exec(inv, "DEL", &list.name, &t, &c) {
            errors.push(e);
        }
    }
    errors
}
