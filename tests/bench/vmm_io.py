#!/usr/bin/env python3
"""I/O benchmark: virtio-net and virtio-fs under husk-vmm against QEMU -M microvm,rtc=on
with the same guest kernel, initramfs, tap, virtiofsd and sizes, run alternately in one
process so both see the same machine load. Meant to run inside the lab (make bench does
that): the tap and its traffic stay inside the lab's L1, which has no network device.

Per run (a fresh VM each time, 1 vCPU, 512 MiB):
- TCP guest -> host and host -> guest over virtio-net on a tap: SIZE bytes each way,
  timed on the host from the connection to the end of the data (MB/s);
- virtio-fs (virtiofsd, one per run): sequential read of a SIZE-byte file and `find` +
  `stat` of 10 000 small files, timed in the guest (/proc/uptime).
Prints medians, the husk/QEMU ratios (for throughput, > 1 means husk is faster; for the
stat walk, < 1) and husk-vmm's own overhead (--report), and writes every sample as JSON.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST_IP, GUEST_IP, TAP = "10.77.0.1", "10.77.0.2", "huskbench0"
MAC = "52:54:00:12:34:56"

INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
size=$(sed -n 's/.*bench.size=\([0-9]*\).*/\1/p' /proc/cmdline)
ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up
mkdir -p /mnt && mount -t virtiofs share /mnt || echo "BENCH-ERROR mount"
up() { cut -d' ' -f1 /proc/uptime; }
echo BENCH-READY
for _ in $(seq 100); do socat -u OPEN:/dev/zero,readbytes="$size" TCP:10.77.0.1:5201 2>/dev/null && break; sleep 0.1; done
echo G2H-DONE
socat -u TCP-LISTEN:5202,reuseaddr OPEN:/dev/null &
sleep 0.3
echo H2G-LISTEN
wait
t0=$(up); cat /mnt/big > /dev/null; t1=$(up)
find /mnt/files -type f | xargs stat > /dev/null; t2=$(up)
echo "FS-READ-S $(awk "BEGIN {print $t1 - $t0}")"
echo "FS-STAT-S $(awk "BEGIN {print $t2 - $t1}")"
echo BENCH-DONE
poweroff -f
"""


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def make_tap(tun_ko):
    if not os.path.exists("/dev/net/tun"):
        # The lab's L1 loads only the modules it needs itself.
        subprocess.run(["insmod", tun_ko], stderr=subprocess.DEVNULL)
        if not os.path.exists("/dev/net/tun"):
            os.makedirs("/dev/net", exist_ok=True)
            sh("mknod", "/dev/net/tun", "c", "10", "200")
    subprocess.run(["ip", "link", "del", TAP], stderr=subprocess.DEVNULL)
    sh("ip", "tuntap", "add", TAP, "mode", "tap")
    sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    sh("ip", "link", "set", TAP, "up")


def make_share(d, size):
    os.makedirs(os.path.join(d, "files"), exist_ok=True)
    with open(os.path.join(d, "big"), "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
    for i in range(10000):
        with open(os.path.join(d, "files", f"f{i:05}"), "w") as f:
            f.write(f"{i}\n")


class Run:
    """One VM: its serial console read in a thread, markers noted."""

    def __init__(self, cmd, timeout):
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  stdin=subprocess.DEVNULL)
        self.text = ""
        self.cond = threading.Condition()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        self.deadline = time.monotonic() + timeout
        self.watchdog = threading.Timer(timeout, self.p.kill)
        self.watchdog.start()

    def _read(self):
        while True:
            chunk = os.read(self.p.stdout.fileno(), 4096)
            with self.cond:
                if not chunk:
                    self.text += "\n<EOF>"
                    self.cond.notify_all()
                    return
                self.text += chunk.decode(errors="replace")
                self.cond.notify_all()

    def wait_for(self, word):
        with self.cond:
            while word not in self.text and "<EOF>" not in self.text:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return word in self.text

    def field(self, key):
        m = re.search(rf"^{key} (\S+)", self.text, re.M)
        return float(m.group(1)) if m else None

    def finish(self):
        code = self.p.wait()
        self.watchdog.cancel()
        self.t.join(5)
        return code


def serve_g2h(result):
    """Receives the guest's stream on port 5201; records MB/s from accept to EOF."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST_IP, 5201))
    s.listen(1)
    s.settimeout(600)
    try:
        c, _ = s.accept()
    except OSError:
        return
    t0, n = time.monotonic(), 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        n += len(b)
    result["g2h_mb_s"] = n / (time.monotonic() - t0) / 1e6
    result["g2h_bytes"] = n
    c.close()
    s.close()


def send_h2g(size):
    """Sends `size` bytes to the guest's port 5202; MB/s from connect to the guest's EOF."""
    buf = b"\0" * (1 << 20)
    for _ in range(100):
        try:
            c = socket.create_connection((GUEST_IP, 5202), timeout=600)
            break
        except OSError:
            time.sleep(0.1)
    else:
        return None
    t0, left = time.monotonic(), size
    while left > 0:
        n = c.send(buf[: min(left, len(buf))])
        left -= n
    c.shutdown(socket.SHUT_WR)
    while c.recv(65536):
        pass
    c.close()
    return size / (time.monotonic() - t0) / 1e6


def one(kind, a, work, i):
    share = os.path.join(work, "share")
    vsock = os.path.join(work, f"vfs-{kind}-{i}.sock")
    vfs = subprocess.Popen([a.virtiofsd, "--socket-path", vsock, "--shared-dir", share,
                            "--sandbox", "none", "--cache", "auto"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(vsock):
            break
        time.sleep(0.05)
    cmdline = f"console=ttyS0 quiet panic=-1 bench.size={a.size}"
    report = os.path.join(work, "report.json")
    if kind == "husk":
        cfg = os.path.join(work, "vm.json")
        with open(cfg, "w") as f:
            json.dump({"kernel": a.kernel, "initramfs": a.initrd, "cmdline": cmdline,
                       "vcpus": 1, "memory_mib": 512, "serial": "stdout",
                       "net": [{"tap": TAP, "mac": MAC}],
                       "fs": [{"tag": "share", "socket": vsock}]}, f)
        if os.path.exists(report):
            os.unlink(report)
        cmd = [a.husk_vmm, "--config", cfg, "--report", report]
    else:
        cmd = ["qemu-system-x86_64", "-M", "microvm,rtc=on,memory-backend=mem", "-enable-kvm",
               "-cpu", "host", "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config",
               "-display", "none", "-no-reboot", "-serial", "stdio",
               "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
               "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
               "-device", f"virtio-net-device,netdev=n0,mac={MAC}",
               "-chardev", f"socket,id=vfs,path={vsock}",
               "-device", "vhost-user-fs-device,chardev=vfs,tag=share",
               "-kernel", a.kernel, "-initrd", a.initrd, "-append", cmdline]
    res = {"run": i}
    g2h = threading.Thread(target=serve_g2h, args=(res,), daemon=True)
    g2h.start()
    r = Run(cmd, a.timeout)
    if r.wait_for("H2G-LISTEN"):
        res["h2g_mb_s"] = send_h2g(a.size)
    r.wait_for("BENCH-DONE")
    res["exit"] = r.finish()
    g2h.join(5)
    res["fs_read_mb_s"] = (a.size / r.field("FS-READ-S") / 1e6) if r.field("FS-READ-S") else None
    res["fs_stat_s"] = r.field("FS-STAT-S")
    vfs.kill()
    vfs.wait()
    if kind == "husk" and os.path.exists(report):
        with open(report) as f:
            res["vmm_overhead_kib"] = json.load(f).get("vmm_overhead_kib")
    if "BENCH-DONE" not in r.text:
        res["console_tail"] = r.text[-2000:]
    return res


def main():
    if sys.argv[1:] == ["--print-init"]:
        print(INIT, end="")
        return 0
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--husk-vmm", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--virtiofsd", required=True)
    ap.add_argument("--tun-ko", default="", help="the guest kernel package's tun.ko, for a host without /dev/net/tun")
    ap.add_argument("--size", type=int, default=256 << 20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="husk-io-")
    make_share(os.path.join(work, "share"), a.size)
    make_tap(a.tun_ko)
    results = {"husk": [], "qemu": []}
    try:
        for i in range(a.runs):
            for kind in ("husk", "qemu"):
                res = one(kind, a, work, i)
                results[kind].append(res)
                print(f"bench-io: run {i + 1}/{a.runs} {kind:5} "
                      + " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in res.items() if k != "console_tail"),
                      file=sys.stderr, flush=True)
                if "console_tail" in res:
                    print(res["console_tail"], file=sys.stderr)
    finally:
        subprocess.run(["ip", "link", "del", TAP], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)

    def med(kind, key):
        vals = [s[key] for s in results[kind] if s.get(key) is not None]
        return statistics.median(vals) if vals else None

    summary = {"runs": a.runs, "size_bytes": a.size}
    print(f"\nvirtio-net and virtio-fs, 1 vCPU, 512 MiB, {a.size >> 20} MiB each way; medians of {a.runs} runs")
    print(f"  {'measure':22} {'husk-vmm':>10} {'QEMU microvm':>13} {'ratio':>6}")
    for key, unit in [("g2h_mb_s", "MB/s"), ("h2g_mb_s", "MB/s"), ("fs_read_mb_s", "MB/s"),
                      ("fs_stat_s", "s")]:
        h, q = med("husk", key), med("qemu", key)
        ratio = (h / q) if h and q else None
        summary[key] = {"husk": h, "qemu": q, "ratio": ratio}
        f = lambda v: f"{v:.2f}" if v is not None else "-"
        print(f"  {key + ' (' + unit + ')':22} {f(h):>10} {f(q):>13} {f(ratio):>6}")
    ov = med("husk", "vmm_overhead_kib")
    summary["husk_vmm_overhead_mib"] = ov / 1024 if ov else None
    print(f"  husk-vmm overhead (peak RSS beyond guest pages): {summary['husk_vmm_overhead_mib'] or 0:.1f} MiB")
    print("  targets: throughput ratio >= 1.0 (stat time ratio <= 1.0); overhead <= 3 MiB")
    failed = sum(1 for k in results for s in results[k] if s.get("exit") != 0)
    summary["failed_runs"] = failed
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"summary": summary, "samples": results}, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
