#!/usr/bin/env python3
"""Host side of the snapshot test (vmm/tests/snapshot.rs), run inside the lab.

    snapshot-host.py DIR HUSK_VMM CLONES [AT_ONCE]

Boots the template VM (DIR/vm.json), asks the guest for its state over vsock, takes a
snapshot through the API, resumes the template and asks again, then restores CLONES
clones one after another (every tenth with copied memory, the rest mapped) and AT_ONCE
(default 4) at once, each with its own
disk, vsock socket and console, and asks each. Then the refusals: a damaged state file,
a configuration of another shape. Prints KEY VALUE lines; every wait is bounded."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

d, vmm, clones = sys.argv[1], sys.argv[2], int(sys.argv[3])
at_once = int(sys.argv[4]) if len(sys.argv) > 4 else 4
snap = os.path.join(d, "snap")
procs = []


def log(key, value):
    print(f"{key} {value}", flush=True)


def api(sock, req, timeout=120):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def ask(uds, timeout):
    """Connects to guest port 1234 through the hybrid vsock socket; returns its line."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(uds)
            s.sendall(b"CONNECT 1234\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            s.close()
            lines = data.decode(errors="replace").splitlines()
            if len(lines) >= 2 and lines[0].startswith("OK "):
                return lines[1]
            last = repr(data)
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise SystemExit(f"no answer on {uds} within {timeout}s: {last}")


def vm_json(name, disk, memory_mib=256):
    cfg = json.load(open(os.path.join(d, "vm.json")))
    cfg["serial"] = {"file": os.path.join(d, f"{name}.console")}
    cfg["vsock"]["uds"] = os.path.join(d, f"{name}.vsock")
    cfg["block"] = [{"path": disk, "read_only": True}]
    cfg["memory_mib"] = memory_mib
    path = os.path.join(d, f"{name}.json")
    json.dump(cfg, open(path, "w"))
    return path, cfg["vsock"]["uds"]


def start(args, name):
    err = open(os.path.join(d, f"{name}.stderr"), "w")
    p = subprocess.Popen([vmm] + args, stdout=err, stderr=err)
    procs.append(p)
    return p


def stop(p, sock):
    try:
        api(sock, {"op": "shutdown"}, timeout=10)
    except OSError:
        p.kill()
    try:
        return p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def disk(name, mib=1):
    """A disk of MIB MiB starting with NAME (padded to 8 bytes with '_')."""
    path = os.path.join(d, f"{name}.img")
    with open(path, "wb") as f:
        f.write(name.encode().ljust(8, b"_")[:8])
        f.truncate(mib << 20)
    return path


try:
    # The template.
    t_cfg, t_uds = vm_json("template", disk("template"))
    t_api = os.path.join(d, "template.api")
    t0 = time.monotonic()
    t = start(["--config", t_cfg, "--api-sock", t_api], "template")
    log("TEMPLATE-ANSWER", ask(t_uds, 300))
    log("BOOT-MS", int((time.monotonic() - t0) * 1000))
    os.mkdir(snap)
    r = api(t_api, {"op": "snapshot", "dir": snap})
    log("SNAPSHOT", json.dumps(r))
    log("SNAPSHOT-AGAIN", json.dumps(api(t_api, {"op": "snapshot", "dir": snap})))
    log("STATUS-AFTER-SNAPSHOT", api(t_api, {"op": "status"}).get("state"))
    log("RESUME", json.dumps(api(t_api, {"op": "resume"})))
    log("TEMPLATE-AFTER-RESUME", ask(t_uds, 60))
    log("TEMPLATE-EXIT", stop(t, t_api))
    st = os.stat(os.path.join(snap, "memory"))
    log("MEMORY-FILE", f"size={st.st_size} allocated={st.st_blocks * 512}")

    # Clones one after another.
    for i in range(clones):
        name = f"clone{i}"
        # Each clone's disk is bigger than the template's: the guest must see its size.
        cfg, uds = vm_json(name, disk(name, 2 + i))
        sock = os.path.join(d, f"{name}.api")
        # Mostly mapped (the default, and fast); every tenth copied.
        mode = "copy" if i % 10 == 1 else "map"
        t0 = time.monotonic()
        p = start(["--config", cfg, "--api-sock", sock, "--restore", snap,
                   "--restore-memory", mode], name)
        answer = ask(uds, 60)
        ms = int((time.monotonic() - t0) * 1000)
        log(f"CLONE{i}-ANSWER", answer)
        log(f"CLONE{i}-MS", f"{mode} {ms}")
        again = ask(uds, 30)
        # A kernel with the vmgenid driver reseeds in a workqueue after the GED's
        # interrupt: ask until it has (bounded), so the answer does not race it.
        end = time.monotonic() + 20
        while "vmgenid=1" in again and "forks=0" in again and time.monotonic() < end:
            time.sleep(0.5)
            again = ask(uds, 30)
        log(f"CLONE{i}-AGAIN", again)
        log(f"CLONE{i}-EXIT", stop(p, sock))

    # Several at once.
    both = []
    for i in range(at_once):
        name = f"par{i}"
        cfg, uds = vm_json(name, disk(name))
        sock = os.path.join(d, f"{name}.api")
        both.append((start(["--config", cfg, "--api-sock", sock, "--restore", snap], name), uds, sock))
    for i, (p, uds, sock) in enumerate(both):
        log(f"PAR{i}-ANSWER", ask(uds, 60))
    for i, (p, uds, sock) in enumerate(both):
        log(f"PAR{i}-EXIT", stop(p, sock))

    # Refusals: each exits 2 at once, naming the reason.
    bad = os.path.join(d, "bad")
    shutil.copytree(snap, bad)
    with open(os.path.join(bad, "state"), "r+b") as f:
        f.seek(-10, os.SEEK_END)
        b = f.read(1)
        f.seek(-10, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xff]))
    cfg, _ = vm_json("bad", disk("bad"))
    r = subprocess.run([vmm, "--config", cfg, "--restore", bad], capture_output=True, text=True, timeout=60)
    log("DAMAGED", f"{r.returncode} {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    cfg, _ = vm_json("shape", disk("shape"), memory_mib=512)
    r = subprocess.run([vmm, "--config", cfg, "--restore", snap], capture_output=True, text=True, timeout=60)
    log("SHAPE", f"{r.returncode} {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    r = subprocess.run([vmm, "--config", cfg, "--restore", os.path.join(d, "nothing")], capture_output=True, text=True, timeout=60)
    log("MISSING", f"{r.returncode} {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}")
    log("HOST-DONE", "yes")
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for name in sorted(os.listdir(d)):
        if name.endswith(".stderr"):
            text = open(os.path.join(d, name)).read().strip()
            if text:
                for line in text.splitlines()[-5:]:
                    print(f"# {name}: {line}", file=sys.stderr)
