#!/usr/bin/env python3
"""Host side of the free page reporting test (vmm/tests/balloon.rs), run inside the lab.

    balloon-host.py DIR HUSK_VMM

Starts husk-vmm, follows the guest's console markers, and prints KEY VALUE lines:
husk-vmm's VmRSS (KiB) before the guest fills 1 GiB, at its peak, and after the guest
freed it (the lowest value seen within 60 s), how long the fall took, and the balloon's
metrics from the API. Every wait is bounded."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

d, vmm = sys.argv[1], sys.argv[2]
# MiB the guest fills and frees (husk.fill on its command line).
FILL_KIB = int(sys.argv[3]) * 1024
console = os.path.join(d, "console.log")
api = os.path.join(d, "api.sock")


def log(key, value):
    print(f"{key} {value}", flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def wait_console(word, proc, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(console, errors="replace") as f:
                if word in f.read():
                    return True
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def metrics():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(api)
    s.sendall(b'{"op": "metrics"}\n')
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


t_start = time.monotonic()
vmm_log = open(os.path.join(d, "vmm.log"), "w")
p = subprocess.Popen(
    [vmm, "--config", os.path.join(d, "vm.json"), "--api-sock", api], stderr=vmm_log
)
try:
    if not wait_console("BALLOON-READY", p, 300):
        log("ERROR", "the guest never got ready")
        sys.exit(1)
    log("BOOT-S", f"{time.monotonic() - t_start:.1f}")
    log("RSS-BEFORE-KIB", rss_kib(p.pid))
    t0 = time.monotonic()
    # The lab's emulated L1 makes every guest page slow to touch.
    if not wait_console("BALLOON-PEAK", p, 900):
        log("ERROR", "the guest never filled its memory")
        sys.exit(1)
    log("FILL-S", f"{time.monotonic() - t0:.1f}")
    peak = rss_kib(p.pid)
    log("RSS-PEAK-KIB", peak)
    if not wait_console("BALLOON-FREED", p, 120):
        log("ERROR", "the guest never freed its memory")
        sys.exit(1)
    t0 = time.monotonic()
    low, low_at = peak, 0.0
    while time.monotonic() - t0 < 60:
        r = rss_kib(p.pid)
        if r < low:
            low, low_at = r, time.monotonic() - t0
        # Settled: most of the fill back and 5 s without a further fall.
        if peak - low > FILL_KIB * 0.88 and time.monotonic() - t0 - low_at > 5:
            break
        time.sleep(0.5)
    log("RSS-AFTER-KIB", low)
    log("FALL-S", f"{low_at:.1f}")
    try:
        m = metrics()
        log("METRICS", json.dumps(m, separators=(",", ":")))
    except OSError as e:
        log("METRICS-ERROR", e)
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        code = p.wait()
    log("VMM-EXIT", code)
finally:
    if p.poll() is None:
        p.kill()
        p.wait()
    print("--- console")
    with open(console, errors="replace") as f:
        print(f.read()[-4000:])
    print("--- vmm log")
    with open(os.path.join(d, "vmm.log"), errors="replace") as f:
        print(f.read()[-4000:])
