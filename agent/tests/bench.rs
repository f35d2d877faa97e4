//! Benchmark (run by `make bench`, not by `make test`): create + start + wait + delete
//! of `/bin/true` through husk-agent on this host, against `runc run` of the same
//! rootfs and process, interleaved; medians and the ratio; the agent's peak RSS.
//! Results: build/bench/agent-host.json.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failure

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_agent_protocol::client::Endpoint;
use husk_agent_protocol::spec::default_spec;
use husk_tests::agent::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: make bench"]
async fn create_start_wait_true_vs_runc() {
    assert!(nix::unistd::geteuid().is_root(), "the benchmark needs root");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::Builder::new()
        .prefix("husk-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = dir.path().join("bundle/rootfs");
    busybox_rootfs(&rootfs);
    // runc's bundle: the same spec, root = the same folder.
    let mut spec = default_spec(&["/bin/true"]);
    spec["root"]["path"] = serde_json::json!("rootfs");
    std::fs::write(dir.path().join("bundle/config.json"), spec.to_string()).unwrap();

    let sock = dir.path().join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
        .args([
            "--listen",
            &format!("unix:{}", sock.display()),
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .env("HUSK_AGENT_LOG", "warn")
        .spawn()
        .unwrap();
    while !sock.exists() || !dir.path().join("agent.sock.stdio").exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ep = Endpoint::Unix(sock);
    let c = ep.agent().await.unwrap();
    let mut root = dir_rootfs(&rootfs.display().to_string());
    root.overlay = false; // runc gets the folder as it is: the same work

    let (mut husk, mut runc) = (Vec::new(), Vec::new());
    for i in 0..runs + 1 {
        let t = Instant::now();
        let id = format!("b{i}");
        start_detached(&c, &root, &id, &default_spec(&["/bin/true"])).await;
        assert_eq!(wait(&c, &id, "").await.exit_status, 0);
        delete(&c, &id).await;
        let h = t.elapsed();

        let t = Instant::now();
        let st = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(dir.path().join("bundle"))
            .arg(format!("r{i}"))
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let r = t.elapsed();
        if i > 0 {
            // the first round warms caches for both
            husk.push(h);
            runc.push(r);
        }
    }
    let rss = vm_hwm_kib(agent.id());
    let (mh, mr) = (median(husk), median(runc));
    let ratio = mh.as_secs_f64() / mr.as_secs_f64();
    println!("agent (host mode), create+start+wait+delete of /bin/true, median of {runs}:");
    println!("  husk-agent {:>8.1} ms", mh.as_secs_f64() * 1e3);
    println!("  runc run   {:>8.1} ms", mr.as_secs_f64() * 1e3);
    println!("  ratio      {ratio:>8.2}");
    println!("  agent peak RSS {} KiB", rss);
    let out = husk_tests::repo_root().join("build/bench");
    std::fs::create_dir_all(&out).unwrap();
    let json = serde_json::json!({
        "runs": runs, "husk_agent_ms": mh.as_secs_f64() * 1e3, "runc_ms": mr.as_secs_f64() * 1e3,
        "ratio": ratio, "agent_peak_rss_kib": rss,
    });
    std::fs::write(
        out.join("agent-host.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
}
