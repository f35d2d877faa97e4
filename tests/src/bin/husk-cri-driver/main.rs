//! The CRI test driver: plays a kubelet against containerd's CRI socket with the `husk`
//! runtime handler and prints what it saw as `CASE name value` lines (the system test,
//! shim/tests/cri.sh and tests/tests/cri.rs, checks them). Run inside the lab.
//!
//! Usage: husk-cri-driver test SOCKET IMAGE LOG_ROOT
//!        husk-cri-driver bench SOCKET IMAGE LOG_ROOT RUNS OUT_JSON (tests/bench/cri.sh)
//!
//! Two pods: `a` with two containers (an httpd and a client) and an OOM-bound third, `b`
//! in a VM of its own; a pod asking for the host's network. Each step prints its case
//! even when it fails (the value is then `error: ...`), so one failure does not hide the
//! others; steps that need an earlier result say what they missed.

#![allow(clippy::print_stdout)] // the cases are this program's output

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod bench;
mod stream;

use husk_tests::cri::{Cri, PodSpec, container_config, ns_mode, v1 as cri};

type Res<T> = Result<T, String>;

fn case(name: &str, value: impl std::fmt::Display) {
    let v = value.to_string().replace('\n', " ");
    println!("CASE {name} {}", v.trim_end());
}

fn show<T: std::fmt::Display, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(v) => v.to_string(),
        Err(e) => format!("error: {e}"),
    }
}

fn st(e: tonic::Status) -> String {
    format!("{:?}: {}", e.code(), e.message())
}

#[derive(Clone)]
struct Driver {
    cri: Cri,
    handler: String,
    image: String,
    log_root: PathBuf,
}

impl Driver {
    async fn run_pod(&mut self, pod: &PodSpec) -> Res<String> {
        let r = self
            .cri
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod.config()),
                runtime_handler: self.handler.clone(),
            })
            .await
            .map_err(st)?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    async fn start_container(
        &mut self,
        pod_id: &str,
        pod: &PodSpec,
        mut cfg: cri::ContainerConfig,
    ) -> Res<String> {
        if cfg.image.as_ref().is_none_or(|i| i.image.is_empty()) {
            cfg.image = Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            });
        }
        let id = self
            .cri
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.into(),
                config: Some(cfg),
                sandbox_config: Some(pod.config()),
            })
            .await
            .map_err(st)?
            .into_inner()
            .container_id;
        self.cri
            .runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(st)?;
        Ok(id)
    }

    /// ExecSync: "EXIT stdout" (stderr appended after `|` when not empty).
    async fn exec(&mut self, id: &str, cmd: &[&str]) -> Res<String> {
        let r = self
            .cri
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 60,
            })
            .await
            .map_err(st)?
            .into_inner();
        let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
        let err = String::from_utf8_lossy(&r.stderr).trim().to_string();
        Ok(if err.is_empty() {
            format!("{} {out}", r.exit_code)
        } else {
            format!("{} {out} | {err}", r.exit_code)
        })
    }

    async fn status(&mut self, id: &str) -> Res<cri::ContainerStatus> {
        self.cri
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .map_err(st)?
            .into_inner()
            .status
            .ok_or_else(|| "no status".to_string())
    }

    async fn pod_ip(&mut self, pod_id: &str) -> Res<String> {
        let s = self
            .cri
            .runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: false,
            })
            .await
            .map_err(st)?
            .into_inner()
            .status
            .ok_or("no status")?;
        let ip = s.network.map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            return Err("the pod has no IP".into());
        }
        Ok(ip)
    }

    /// Waits (≤ `secs`) until the container has exited; its status then.
    async fn wait_exit(&mut self, id: &str, secs: u64) -> Res<cri::ContainerStatus> {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.status(id).await?;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            if Instant::now() > end {
                return Err(format!("still in state {} after {secs} s", s.state));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn stats(&mut self, id: &str) -> Res<String> {
        let s = self
            .cri
            .runtime
            .container_stats(cri::ContainerStatsRequest {
                container_id: id.into(),
            })
            .await
            .map_err(st)?
            .into_inner()
            .stats
            .ok_or("no stats")?;
        let cpu = s
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value)
            .unwrap_or(0);
        let mem = s
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value)
            .unwrap_or(0);
        Ok(format!(
            "cpu={} mem={}",
            if cpu > 0 { "nonzero" } else { "0" },
            if mem > 0 { "nonzero" } else { "0" }
        ))
    }

    async fn stop_remove(&mut self, pod_id: &str) -> Res<String> {
        self.cri
            .runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(st)?;
        self.cri
            .runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.into(),
            })
            .await
            .map_err(st)?;
        Ok("ok".into())
    }
}

/// An HTTP GET of `/` from `ip:port` (this host, outside every pod): the body.
fn http_get(ip: &str, port: u16) -> Res<String> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}")
        .parse()
        .map_err(|e| format!("{ip}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(20))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.take(1 << 20)
        .read_to_string(&mut body)
        .map_err(|e| format!("read {addr}: {e}"))?;
    Ok(body
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The CRI log file's streams: "stdout:LINE stderr:LINE ..." for lines in the CRI
/// format (`TIMESTAMP STREAM F|P TEXT`), or what was wrong with a line.
fn read_cri_log(path: &Path) -> Res<String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (ts, stream, tag, msg) = (f.next(), f.next(), f.next(), f.next());
        match (ts, stream, tag, msg) {
            (Some(ts), Some(s @ ("stdout" | "stderr")), Some("F" | "P"), Some(m))
                if ts.len() > 20 && ts.contains('T') =>
            {
                out.push(format!("{s}:{m}"))
            }
            _ => return Err(format!("not a CRI log line: {line:?}")),
        }
    }
    out.sort();
    Ok(out.join(" "))
}

const USAGE: &str = "usage: husk-cri-driver test SOCKET IMAGE LOG_ROOT\n       \
                     husk-cri-driver bench SOCKET IMAGE LOG_ROOT RUNS OUT_JSON";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = match args.split_first() {
        Some((m, r)) if (m == "test" && r.len() == 3) || (m == "bench" && r.len() == 5) => {
            (m.as_str(), r)
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let cri = match Cri::connect(Path::new(&rest[0])).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk-cri-driver: cannot connect to {}: {e:?}", rest[0]);
            std::process::exit(1);
        }
    };
    let mut d = Driver {
        cri,
        handler: "husk".into(),
        image: rest[1].clone(),
        log_root: PathBuf::from(&rest[2]),
    };
    if mode == "bench" {
        let runs = rest[3].parse().unwrap_or(0);
        if runs == 0 {
            eprintln!(
                "husk-cri-driver: RUNS must be a positive number, not {:?}",
                rest[3]
            );
            std::process::exit(2);
        }
        if let Err(e) = bench::run(&mut d, runs, Path::new(&rest[4])).await {
            eprintln!("husk-cri-driver bench: {e}");
            std::process::exit(1);
        }
        return;
    }
    let v = d
        .cri
        .runtime
        .version(cri::VersionRequest::default())
        .await
        .map(|r| r.into_inner().runtime_name)
        .map_err(st);
    case("version", show(&v));
    scenario(&mut d).await;
}

async fn scenario(d: &mut Driver) {
    // Pod a: two containers sharing the pod's network, an OOM-bound third.
    let t = Instant::now();
    let mut pod_a = PodSpec::new("pod-a", &d.log_root);
    pod_a.dns = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["husk-test.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let a = d.run_pod(&pod_a).await;
    case("pod_a", show(&a.as_ref().map(|_| "ready")));
    eprintln!("MEASURE run_pod_sandbox {:.1} s", t.elapsed().as_secs_f64());
    let Ok(a) = a else { return };
    let t = Instant::now();
    let web = d
        .start_container(
            &a,
            &pod_a,
            container_config(
                &pod_a,
                "web",
                "",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo hello-from-web >/www/index.html && \
                     echo out-line && echo err-line >&2 && exec httpd -f -p 8080 -h /www",
                ],
            ),
        )
        .await;
    eprintln!("MEASURE first_container {:.1} s", t.elapsed().as_secs_f64());
    case("web", show(&web.as_ref().map(|_| "started")));
    let client = d
        .start_container(
            &a,
            &pod_a,
            container_config(&pod_a, "client", "", &["sleep", "3600"]),
        )
        .await;
    case("client", show(&client.as_ref().map(|_| "started")));
    let (Ok(web), Ok(client)) = (web, client) else {
        let _ = d.stop_remove(&a).await;
        return;
    };
    case("exec_web", show(&d.exec(&web, &["hostname"]).await));
    case(
        "resolv_conf",
        show(
            &d.exec(
                &web,
                &[
                    "grep",
                    "-c",
                    "-e",
                    "nameserver 10.96.0.10",
                    "-e",
                    "search husk-test.svc.cluster.local",
                    "-e",
                    "ndots:5",
                    "/etc/resolv.conf",
                ],
            )
            .await,
        ),
    );
    case(
        "exec_exit",
        show(&d.exec(&client, &["sh", "-c", "echo x; exit 7"]).await),
    );
    // The two containers talk over the pod's localhost (httpd may need a moment).
    let mut local = Err(String::from("not tried"));
    for _ in 0..20 {
        local = d
            .exec(&client, &["wget", "-qO-", "http://127.0.0.1:8080/"])
            .await;
        if matches!(&local, Ok(s) if s.starts_with("0 ")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    case("localhost", show(&local));
    // One /dev/shm per pod (CRI's sandbox shm): what one container writes there, the
    // other reads.
    let _ = d
        .exec(&web, &["sh", "-c", "echo pod-wide >/dev/shm/husk-shm-test"])
        .await;
    case(
        "pod_shm",
        show(&d.exec(&client, &["cat", "/dev/shm/husk-shm-test"]).await),
    );
    let ip = d.pod_ip(&a).await;
    case(
        "pod_ip",
        show(
            &ip.as_ref()
                .map(|ip| if ip.is_empty() { "none" } else { "yes" }),
        ),
    );
    let from_host = match &ip {
        Ok(ip) => http_get(ip, 8080),
        Err(e) => Err(format!("no pod IP: {e}")),
    };
    case("from_host", show(&from_host));
    // Logs: both streams, in the CRI format.
    let log = d.log_root.join("pod-a/web.log");
    let mut logs = Err(String::from("not read"));
    for _ in 0..20 {
        logs = read_cri_log(&log);
        if matches!(&logs, Ok(s) if s.contains("stderr:") && s.contains("stdout:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    case("logs", show(&logs));
    // PortForward: containerd dials 127.0.0.1:8080 in the pod's namespace on the host;
    // the shim forwards that into the VM.
    let pf = match d
        .cri
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: a.clone(),
            port: vec![8080],
        })
        .await
    {
        Ok(r) => {
            let url = r.into_inner().url;
            tokio::task::spawn_blocking(move || {
                stream::port_forward(&url, 8080, b"GET / HTTP/1.0\r\n\r\n")
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map(|reply| {
                reply
                    .split("\r\n\r\n")
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
        }
        Err(e) => Err(st(e)),
    };
    case("port_forward", show(&pf));
    // Attach to a container reading its stdin: what goes in comes back on stdout.
    let mut cat = container_config(&pod_a, "cat", &d.image, &["cat"]);
    cat.stdin = true;
    let att = match d.start_container(&a, &pod_a, cat).await {
        Ok(id) => match d
            .cri
            .runtime
            .attach(cri::AttachRequest {
                container_id: id,
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
            })
            .await
        {
            Ok(r) => {
                let url = r.into_inner().url;
                tokio::task::spawn_blocking(move || {
                    stream::attach(&url, b"hello-attach\n", "hello-attach")
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r)
            }
            Err(e) => Err(st(e)),
        },
        Err(e) => Err(e),
    };
    case("attach", show(&att));
    case("stats", show(&d.stats(&web).await));
    let listed = d
        .cri
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest::default())
        .await
        .map(|r| r.into_inner().stats.len())
        .map_err(st);
    case("list_stats", show(&listed));

    // UpdateContainerResources reaches the container's cgroup in the guest.
    let upd = d
        .cri
        .runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: client.clone(),
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(st);
    let max = match upd {
        Ok(_) => {
            d.exec(
                &client,
                &[
                    "sh",
                    "-c",
                    "cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max",
                ],
            )
            .await
        }
        Err(e) => Err(e),
    };
    case("update_resources", show(&max));
    // A created, not started container has stats too.
    let idle = d
        .cri
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: a.clone(),
            config: Some(container_config(&pod_a, "idle", &d.image, &["true"])),
            sandbox_config: Some(pod_a.config()),
        })
        .await
        .map(|r| r.into_inner().container_id)
        .map_err(st);
    let idle_stats = match &idle {
        Ok(id) => d.stats(id).await.map(|_| "answered"),
        Err(e) => Err(e.clone()),
    };
    // containerd 1.6 creates the task at StartContainer: ContainerStats of a created
    // container has no task to ask, whatever the runtime. Shown beside runc's answer.
    case("created_stats", show(&idle_stats));
    let runc_pod = PodSpec::new("pod-runc", &d.log_root);
    d.handler = "runc".into();
    let runc_stats = match d.run_pod(&runc_pod).await {
        Ok(p) => {
            let r = d
                .cri
                .runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: p.clone(),
                    config: Some(container_config(&runc_pod, "idle", &d.image, &["true"])),
                    sandbox_config: Some(runc_pod.config()),
                })
                .await
                .map_err(st);
            let r = match r {
                Ok(c) => d
                    .stats(&c.into_inner().container_id)
                    .await
                    .map(|_| "answered"),
                Err(e) => Err(e),
            };
            let _ = d.stop_remove(&p).await;
            r
        }
        Err(e) => Err(e),
    };
    d.handler = "husk".into();
    case("created_stats_runc", show(&runc_stats));
    // StopContainer: SIGTERM, then SIGKILL after the timeout (sleep as its pid
    // namespace's PID 1 ignores SIGTERM).
    let stopped = match d
        .cri
        .runtime
        .stop_container(cri::StopContainerRequest {
            container_id: client.clone(),
            timeout: 2,
        })
        .await
    {
        Ok(_) => d
            .wait_exit(&client, 30)
            .await
            .map(|s| s.exit_code.to_string()),
        Err(e) => Err(st(e)),
    };
    case("stop_container", show(&stopped));

    // Pod b, in a VM of its own, reaches pod a's IP.
    // Pod b shares one pid namespace (shareProcessNamespace): the pause process is
    // its PID 1.
    let mut pod_b = PodSpec::new("pod-b", &d.log_root);
    pod_b.pid = ns_mode::POD;
    let b = d.run_pod(&pod_b).await;
    case("pod_b", show(&b.as_ref().map(|_| "ready")));
    if let (Ok(b), Ok(ip)) = (&b, &ip) {
        let c = d
            .start_container(
                b,
                &pod_b,
                container_config(&pod_b, "b", "", &["sleep", "3600"]),
            )
            .await;
        let r = match &c {
            Ok(c) => {
                d.exec(c, &["wget", "-qO-", &format!("http://{ip}:8080/")])
                    .await
            }
            Err(e) => Err(e.clone()),
        };
        case("pod_to_pod", show(&r));
        let r = match &c {
            Ok(c) => {
                d.exec(c, &["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"])
                    .await
            }
            Err(e) => Err(e.clone()),
        };
        case("shared_pid", show(&r));
    }

    // An OOM kill is reported as OOMKilled.
    let mut oom = container_config(
        &pod_a,
        "oom",
        "",
        &[
            "sh",
            "-c",
            "sleep 1; x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    if let Some(l) = oom.linux.as_mut() {
        l.resources = Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 48 << 20,
            ..Default::default()
        });
    }
    let oom = match d.start_container(&a, &pod_a, oom).await {
        Ok(id) => d
            .wait_exit(&id, 120)
            .await
            .map(|s| format!("{} {}", s.exit_code, s.reason)),
        Err(e) => Err(e),
    };
    case("oom", show(&oom));

    // Stop and remove both pods.
    case("remove_a", show(&d.stop_remove(&a).await));
    if let Ok(b) = &b {
        case("remove_b", show(&d.stop_remove(b).await));
    }

    // A pod asking for the host's network fails with a message naming it.
    let mut host = PodSpec::new("pod-host", &d.log_root);
    host.network = ns_mode::NODE;
    let r = d.run_pod(&host).await;
    case(
        "host_network",
        match &r {
            Ok(_) => "accepted".to_string(),
            Err(e) if e.starts_with("InvalidArgument") && e.contains("hostNetwork") => {
                "refused by name".to_string()
            }
            Err(e) => format!("refused: {e}"),
        },
    );
    if let Ok(id) = r {
        let _ = d.stop_remove(&id).await;
    }
    let left = d
        .cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .map(|r| r.into_inner().items.len())
        .map_err(st);
    case("pods_left", show(&left));
}
