#!/usr/bin/env python3
"""Host side of the vsock abuse test (vmm/tests/vsock_abuse.rs), run inside the lab.

    vsock-abuse-host.py DIR HUSK_VMM

Starts the host listeners the hostile guest aims at (port 7000: backlog full, never
accepted; port 7001: every connection accepted and closed at once), starts husk-vmm,
and prints KEY VALUE lines: VMM RSS before and after the abuse, the latency of new
host-to-guest connections before and during it, and how long SIGTERM takes to end
husk-vmm. Every wait is bounded."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

d, vmm = sys.argv[1], sys.argv[2]
uds = os.path.join(d, "v.sock")
console = os.path.join(d, "console.log")


def log(key, value):
    print(f"{key} {value}", flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


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


def probe(port):
    """One host-initiated connection: CONNECT, OK, an echoed line. Seconds taken."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(uds)
    s.sendall(f"CONNECT {port}\n".encode())
    buf = b""
    while buf.count(b"\n") < 1:
        chunk = s.recv(64)
        if not chunk:
            raise RuntimeError(f"closed before OK: {buf!r}")
        buf += chunk
    if not buf.startswith(b"OK "):
        raise RuntimeError(f"no OK: {buf!r}")
    s.sendall(b"ping\n")
    rest = buf.split(b"\n", 1)[1]
    while b"ping\n" not in rest:
        chunk = s.recv(64)
        if not chunk:
            raise RuntimeError("closed before the echo")
        rest += chunk
    s.close()
    return time.monotonic() - t0


def latencies(n):
    out = []
    for _ in range(n):
        out.append(probe(5000) * 1000)
        time.sleep(0.05)
    out.sort()
    return out


# Port 7000: a listener whose backlog fills at once and is never accepted.
full = socket.socket(socket.AF_UNIX)
full.bind(uds + "_7000")
full.listen(1)
# Port 7001: accept and close, as fast as they come.
closer = socket.socket(socket.AF_UNIX)
closer.bind(uds + "_7001")
closer.listen(4096)
accepted = [0]


def close_all():
    while True:
        try:
            c, _ = closer.accept()
        except OSError:
            return
        accepted[0] += 1
        c.close()


threading.Thread(target=close_all, daemon=True).start()

vmm_log = open(os.path.join(d, "vmm.log"), "w")
p = subprocess.Popen([vmm, "--config", os.path.join(d, "vm.json")], stderr=vmm_log)
try:
    if not wait_console("ABUSE-READY", p, 300):
        log("ERROR", "the guest never got ready")
        sys.exit(1)
    time.sleep(1)
    base = latencies(5)
    log("BASE-LATENCY-MS", f"{base[len(base) // 2]:.1f} {base[-1]:.1f}")
    rss0, fds0 = rss_kib(p.pid), fds(p.pid)
    log("RSS0-KIB", rss0)
    log("FDS0", fds0)
    # Go: the guest starts flooding and holding.
    s = socket.socket(socket.AF_UNIX)
    s.connect(uds)
    s.sendall(b"CONNECT 5001\n")
    s.recv(64)
    s.close()
    if not wait_console("HOLD ", p, 600):
        log("ERROR", "the guest never finished opening its connections")
        sys.exit(1)
    log("HOST-ACCEPTED", accepted[0])
    during = latencies(10)
    log("ABUSE-LATENCY-MS", f"{during[len(during) // 2]:.1f} {during[-1]:.1f}")
    log("RSS1-KIB", rss_kib(p.pid))
    log("FDS1", fds(p.pid))
    if not wait_console("ABUSE-DONE", p, 300):
        log("ERROR", "the flood never ended")
        sys.exit(1)
    # Connections the host closed are gone by now (2 s timeout).
    time.sleep(3)
    log("RSS2-KIB", rss_kib(p.pid))
    log("FDS2", fds(p.pid))
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        code = p.wait()
    log("TERM-MS", f"{(time.monotonic() - t0) * 1000:.0f}")
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
