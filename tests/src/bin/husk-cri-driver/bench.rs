//! `husk-cri-driver bench`: pod start through CRI with the `husk` handler against
//! `runc`, same containerd, same image, interleaved: RunPodSandbox + CreateContainer +
//! StartContainer until the container runs, RUNS times each (medians, p90); then 10 pods
//! started at once per handler (pods per minute). Prints a table, writes OUT_JSON.

use std::path::Path;
use std::time::Instant;

use husk_tests::cri::{PodSpec, container_config};

use super::Driver;

/// Starts one pod with one `sleep` container on `d.handler`: its id and the time taken.
async fn start_pod(d: &mut Driver, name: &str) -> Result<(String, f64), String> {
    let t = Instant::now();
    let pod = PodSpec::new(name, &d.log_root);
    let id = d.run_pod(&pod).await?;
    let cfg = container_config(&pod, "c", &d.image, &["sleep", "3600"]);
    if let Err(e) = d.start_container(&id, &pod, cfg).await {
        let _ = d.stop_remove(&id).await;
        return Err(e);
    }
    Ok((id, t.elapsed().as_secs_f64() * 1000.0))
}

fn pct(v: &[f64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = (v.len() * p).div_ceil(100).clamp(1, v.len().max(1));
    v.get(i - 1).copied().unwrap_or(0.0)
}

/// 10 pods at once on `handler`: seconds until all run.
async fn burst(d: &Driver, handler: &str, n: usize) -> Result<f64, String> {
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut d = d.clone();
        d.handler = handler.into();
        let name = format!("burst-{handler}-{i}");
        set.spawn(async move { start_pod(&mut d, &name).await.map(|(id, _)| (d, id)) });
    }
    let mut started = Vec::new();
    let mut first_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(x)) => started.push(x),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(e) => first_err = first_err.or(Some(e.to_string())),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    for (mut d, id) in started {
        let _ = d.stop_remove(&id).await;
    }
    match first_err {
        Some(e) => Err(format!("{handler}: {e}")),
        None => Ok(secs),
    }
}

pub async fn run(d: &mut Driver, runs: usize, out: &Path) -> Result<(), String> {
    let handlers = ["husk", "runc"];
    // Warm both (snapshots unpacked, the guest image in the page cache).
    for h in handlers {
        d.handler = h.into();
        let (id, _) = start_pod(d, &format!("warm-{h}")).await?;
        d.stop_remove(&id).await?;
    }
    let mut ms: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for i in 0..runs {
        for (k, h) in handlers.iter().enumerate() {
            d.handler = (*h).into();
            let (id, t) = start_pod(d, &format!("{h}-{i}")).await?;
            ms[k].push(t);
            d.stop_remove(&id).await?;
        }
    }
    const BURST: usize = 10;
    let mut burst_s = [0.0; 2];
    for (k, h) in handlers.iter().enumerate() {
        burst_s[k] = burst(d, h, BURST).await?;
    }
    let per_min = |s: f64| BURST as f64 * 60.0 / s;
    println!(
        "CRI pod start (RunPodSandbox + CreateContainer + StartContainer), {runs} runs each, in the lab:"
    );
    for (k, h) in handlers.iter().enumerate() {
        println!(
            "  {h:<5} median {:7.0} ms  p90 {:7.0} ms  | {BURST} at once: {:6.1} s, {:5.1} pods/min",
            pct(&ms[k], 50),
            pct(&ms[k], 90),
            burst_s[k],
            per_min(burst_s[k])
        );
    }
    println!(
        "  ratio husk/runc: median {:.1}, {BURST} at once {:.1}",
        pct(&ms[0], 50) / pct(&ms[1], 50).max(1.0),
        burst_s[0] / burst_s[1].max(0.001)
    );
    let json = serde_json::json!({
        "runs": runs,
        "husk_ms": {"median": pct(&ms[0], 50), "p90": pct(&ms[0], 90), "all": ms[0]},
        "runc_ms": {"median": pct(&ms[1], 50), "p90": pct(&ms[1], 90), "all": ms[1]},
        "burst": {"pods": BURST, "husk_s": burst_s[0], "runc_s": burst_s[1],
                  "husk_pods_per_min": per_min(burst_s[0]), "runc_pods_per_min": per_min(burst_s[1])},
    });
    std::fs::write(out, json.to_string() + "\n").map_err(|e| format!("{}: {e}", out.display()))
}
