#!/usr/bin/env python3
"""Boot-time benchmark: husk-vmm against QEMU -M microvm,rtc=on, same kernel, same
initramfs, same size (1 vCPU, 256 MiB), run alternately in one process so both see the
same machine load. Meant to run inside the lab (make bench does that).

Measures, per run: seconds from starting the VMM to the guest's marker line on the serial
console, and peak RSS (wait4). husk-vmm also reports its own overhead (peak RSS minus the
guest pages it backs) through --report. Prints medians and the husk/QEMU ratio, and writes
every sample as JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MARKER = b"HUSK-BENCH-MARKER"


def run_one(cmd, timeout):
    """Runs cmd; returns (seconds to marker or None, peak RSS KiB, exit status). A run
    that outlives `timeout` is killed (a watchdog, since reads block)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    watchdog = threading.Timer(timeout, p.kill)
    watchdog.start()
    marker_at = None
    tail = b""
    try:
        while True:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            tail = (tail + chunk)[-256:]
            if marker_at is None and MARKER in tail:
                marker_at = time.monotonic() - t0
    finally:
        watchdog.cancel()
    _, status, rusage = os.wait4(p.pid, 0)
    p.stdout.close()
    return marker_at, rusage.ru_maxrss, os.waitstatus_to_exitcode(status)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--husk-vmm", required=True)
    ap.add_argument("--kernel", action="append", required=True, metavar="LABEL=PATH",
                    help="a kernel to boot (repeatable), e.g. bzImage=/boot/vmlinuz")
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=120)
    ap.add_argument("--out", help="write all samples here (JSON)")
    a = ap.parse_args()

    cmdline = "console=ttyS0 quiet panic=-1"
    work = tempfile.mkdtemp(prefix="husk-bench-")
    kernels = [k.split("=", 1) for k in a.kernel]
    samples = {}
    for label, path in kernels:
        cfg = os.path.join(work, f"vm-{label}.json")
        with open(cfg, "w") as f:
            json.dump({"kernel": path, "initramfs": a.initrd, "cmdline": cmdline,
                       "vcpus": 1, "memory_mib": 256, "serial": "stdout"}, f)
        qemu = ["qemu-system-x86_64", "-M", "microvm,rtc=on", "-enable-kvm", "-cpu", "host",
                "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                "-no-reboot", "-serial", "stdio", "-kernel", path, "-initrd", a.initrd,
                "-append", cmdline]
        samples[f"husk-vmm {label}"] = ("husk", cfg)
        samples[f"qemu-microvm {label}"] = ("qemu", qemu)
    results = {name: [] for name in samples}
    # Alternate every configuration within each round, so that load drifts hit all alike.
    for i in range(a.runs):
        for name, (kind, arg) in samples.items():
            report = os.path.join(work, f"report-{i}.json")
            if os.path.exists(report):
                os.unlink(report)
            cmd = [a.husk_vmm, "--config", arg, "--report", report] if kind == "husk" else arg
            secs, rss, code = run_one(cmd, a.timeout)
            s = {"run": i, "marker_s": secs, "peak_rss_kib": rss, "exit": code}
            if kind == "husk" and os.path.exists(report):
                with open(report) as f:
                    r = json.load(f)
                s["vmm_overhead_kib"] = r["vmm_overhead_kib"]
                s["guest_rss_kib"] = r["guest_rss_kib"]
            results[name].append(s)
            shown = f"{secs:.2f}s" if secs is not None else "no marker"
            print(f"bench: run {i + 1}/{a.runs} {name:22} {shown:>9}  peak RSS {rss / 1024:6.1f} MiB  exit {code}",
                  file=sys.stderr, flush=True)

    def med(name, key):
        vals = [s[key] for s in results[name] if s.get(key) is not None]
        return statistics.median(vals) if vals else None

    summary = {"runs": a.runs, "kernels": {}}
    failed = sum(1 for n in results for s in results[n] if s["marker_s"] is None or s["exit"] != 0)
    print(f"\nboot to marker, 1 vCPU, 256 MiB, same initramfs; medians of {a.runs} runs")
    print(f"  {'kernel':10} {'husk-vmm':>9} {'QEMU microvm':>13} {'ratio':>6}   peak RSS husk / QEMU   husk overhead")
    for label, _ in kernels:
        h, q = med(f"husk-vmm {label}", "marker_s"), med(f"qemu-microvm {label}", "marker_s")
        k = {
            "husk_vmm_median_s": h,
            "qemu_microvm_median_s": q,
            "ratio": (h / q) if h and q else None,
            "husk_vmm_peak_rss_mib": (med(f"husk-vmm {label}", "peak_rss_kib") or 0) / 1024,
            "qemu_peak_rss_mib": (med(f"qemu-microvm {label}", "peak_rss_kib") or 0) / 1024,
            "husk_vmm_overhead_mib": (med(f"husk-vmm {label}", "vmm_overhead_kib") or 0) / 1024,
        }
        summary["kernels"][label] = k
        fmt = lambda v: f"{v:.2f}s" if v else "-"
        ratio = f"{k['ratio']:.2f}" if k["ratio"] else "-"
        print(f"  {label:10} {fmt(h):>9} {fmt(q):>13} {ratio:>6}   "
              f"{k['husk_vmm_peak_rss_mib']:6.1f} / {k['qemu_peak_rss_mib']:6.1f} MiB   "
              f"{k['husk_vmm_overhead_mib']:.1f} MiB")
    print("  targets: ratio <= 0.8; husk-vmm overhead (peak RSS beyond the guest pages it backs) <= 5 MiB")
    summary["failed_runs"] = failed
    if failed:
        print(f"  {failed} run(s) failed (no marker or non-zero exit)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"summary": summary, "samples": results}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
