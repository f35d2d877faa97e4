//! Benchmark (run by `make bench`, not by `make test`): in the lab, husk-vmm start →
//! husk-agent ready (its readiness connection on host vsock port 1025), and → agent
//! connected (GuestDetails + CreateSandbox answered), over BENCH_RUNS boots of the
//! guest image; medians. Results: build/bench/agent-ready.json.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a panic is a failure

use std::path::Path;
use std::time::Duration;

use husk::guest::{GuestImage, vmm_binary};
use husk::sandbox::{Sandbox, SandboxSpec};

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[test]
#[ignore = "benchmark: make bench"]
fn agent_ready() {
    let lab = husk_tests::require_lab!();
    let guest = husk_tests::repo_root().join("build/guest");
    assert!(
        guest.join("initramfs.img").is_file(),
        "run make guest-image first"
    );
    let r = lab
        .timeout(Duration::from_secs(1200))
        .env("HUSK_GUEST_DIR", &guest.display().to_string())
        .env("BENCH_RUNS", &runs().to_string())
        .run_test("agent_ready_inside")
        .unwrap();
    r.assert_success();
    let med = |key: &str| -> f64 {
        let mut v: Vec<f64> = r
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("READY "))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            })
            .filter_map(|v| v.parse().ok())
            .collect();
        assert!(!v.is_empty(), "no READY lines:\n{}", r.stdout);
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ready, connected, uptime) = (med("ready_ms"), med("connected_ms"), med("guest_uptime_ms"));
    println!(
        "husk-vmm start -> agent ready, median of {} boots in the lab: {ready:.0} ms",
        runs()
    );
    println!("                -> agent connected (GuestDetails, CreateSandbox): {connected:.0} ms");
    println!("guest's own uptime when ready (kernel + agent start): {uptime:.0} ms");
    let out = husk_tests::repo_root().join("build/bench");
    std::fs::create_dir_all(&out).unwrap();
    let json = serde_json::json!({"runs": runs(), "ready_ms": ready, "connected_ms": connected, "guest_uptime_ms": uptime});
    std::fs::write(
        out.join("agent-ready.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

#[test]
#[ignore = "runs inside the lab, started by agent_ready"]
fn agent_ready_inside() {
    if !husk_tests::lab::inside() {
        eprintln!("SKIPPED: only runs inside the lab (agent_ready starts it)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let image = GuestImage::locate(Path::new("/nonexistent"), None).unwrap();
    for i in 0..runs() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SandboxSpec {
            ready_timeout: Duration::from_secs(120),
            ..SandboxSpec::new(
                &format!("bench{i}"),
                dir.path().join("sb"),
                vmm_binary().unwrap(),
                &image,
            )
        };
        rt.block_on(async {
            let sb = Sandbox::boot(&spec)
                .await
                .unwrap_or_else(|e| panic!("boot: {e}"));
            println!(
                "READY run={i} ready_ms={} connected_ms={} guest_uptime_ms={}",
                sb.times.agent_ready.as_millis(),
                sb.times.connected.as_millis(),
                sb.times.guest_uptime.as_millis()
            );
            assert_eq!(sb.shutdown().await, Some(0));
        });
    }
}
