#!/usr/bin/env python3
"""Writes the seed inputs of fuzz/corpus/<target>/seed-* (a few valid and a few hostile
inputs per target, in the formats fuzz/src/*.rs describe). Run from anywhere; the
seeds are committed, and libFuzzer's finds are not (make fuzz keeps those in
fuzz/target/corpus/)."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
NEXT, WRITE, INDIRECT = 1, 2, 4
DATA = 0x10000


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


def queue(descs, ring, size_exp=4, qflags=0, avail_idx=None, next_avail=0, used_event=0):
    if avail_idx is None:
        avail_idx = (next_avail + len(ring)) & 0xFFFF
    out = struct.pack("<BBHHH", size_exp, qflags, avail_idx, next_avail, used_event)
    out += bytes([len(descs)]) + b"".join(descs)
    out += bytes([len(ring)]) + b"".join(struct.pack("<H", r) for r in ring)
    return out


def payload(data):
    return struct.pack("<H", len(data)) + data


def chain(first, parts):
    """Descriptors (addr, len, flags) linked from table index `first` on."""
    out = []
    for i, (a, l, f) in enumerate(parts):
        last = i + 1 == len(parts)
        out.append(desc(a, l, f | (0 if last else NEXT), 0 if last else first + i + 1))
    return out


def put(data, off, blob):
    data = bytearray(data)
    if len(data) < off + len(blob):
        data.extend(b"\0" * (off + len(blob) - len(data)))
    data[off:off + len(blob)] = blob
    return bytes(data)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def blk_hdr(kind, sector):
    return struct.pack("<IIQ", kind, 0, sector)


def block():
    rd = chain(0, [(DATA, 16, 0), (0x11000, 512, WRITE), (0x12000, 1, WRITE)])
    write("virtio_block", "read", b"\0" + queue(rd, [0]) + payload(blk_hdr(0, 1)))
    wr = chain(0, [(DATA, 16, 0), (0x11000, 512, 0), (0x12000, 1, WRITE)])
    write("virtio_block", "write", b"\0" + queue(wr, [0]) + payload(blk_hdr(1, 2)))
    write("virtio_block", "write-read-only", b"\1" + queue(wr, [0]) + payload(blk_hdr(1, 2)))
    # flush and get-id, headers at DATA and DATA+16.
    two = chain(0, [(DATA, 16, 0), (0x12000, 1, WRITE)]) + chain(
        2, [(DATA + 16, 16, 0), (0x11000, 20, WRITE), (0x12001, 1, WRITE)])
    write("virtio_block", "flush-get-id",
          b"\0" + queue(two, [0, 2]) + payload(blk_hdr(4, 0) + blk_hdr(8, 0)))
    # A read whose buffer runs from RAM into the hole.
    hole = chain(0, [(DATA, 16, 0), (0x3FF00, 0x200, WRITE), (0x12000, 1, WRITE)])
    write("virtio_block", "into-the-hole", b"\0" + queue(hole, [0]) + payload(blk_hdr(0, 0)))
    # An indirect table (at DATA + 0x100) holding the whole request.
    table = b"".join(chain(0, [(DATA, 16, 0), (0x11000, 1024, WRITE), (0x12000, 1, WRITE)]))
    ind = [desc(DATA + 0x100, len(table), INDIRECT)]
    write("virtio_block", "indirect",
          b"\0" + queue(ind, [0]) + payload(put(blk_hdr(0, 3), 0x100, table)))
    # A chain that loops, and a read past the end of the disk.
    loop = [desc(DATA, 16, NEXT, 1), desc(0x11000, 512, NEXT | WRITE, 0)]
    write("virtio_block", "loop", b"\0" + queue(loop, [0]) + payload(blk_hdr(0, 0)))
    write("virtio_block", "past-the-end", b"\0" + queue(rd, [0]) + payload(blk_hdr(0, 128)))
    # EVENT_IDX, a ring that has wrapped.
    write("virtio_block", "event-idx-wrapped",
          b"\0" + queue(rd, [0] * 16, qflags=1, next_avail=0xFFF8, used_event=0xFFF9)
          + payload(blk_hdr(0, 1)))


def net():
    frame = bytes(12) + bytes(range(64))
    tx = chain(0, [(DATA, len(frame), 0)])
    rx = chain(0, [(0x14000, 2048, WRITE)])
    frames = struct.pack("<H", len(frame)) + frame
    write("virtio_net", "tx-rx", b"\0" + queue(rx, [0]) + queue(tx, [0]) + payload(frame) + frames)
    # Header and frame split; an RX frame spread over three small buffers (MRG_RXBUF).
    txs = chain(0, [(DATA, 12, 0), (DATA + 12, 64, 0)])
    rxs = chain(0, [(0x14000, 40, WRITE)]) + chain(1, [(0x15000, 40, WRITE)]) + \
        chain(2, [(0x16000, 40, WRITE)])
    write("virtio_net", "mergeable",
          b"\1" + queue(rxs, [0, 1, 2]) + queue(txs, [0]) + payload(frame) + frames)
    # Hostile: a writable TX descriptor, a read-only RX buffer, a frame too short.
    txw = chain(0, [(DATA, len(frame), WRITE)])
    rxr = chain(0, [(0x14000, 2048, 0)])
    write("virtio_net", "wrong-directions",
          b"\0" + queue(rxr, [0]) + queue(txw, [0]) + payload(frame) + struct.pack("<H", 4) + b"abcd")


def vsock_hdr(src_port, dst_port, op, length=0, flags=0, src_cid=3, dst_cid=2, typ=1,
              buf_alloc=65536, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, typ, op,
                       flags, buf_alloc, fwd_cnt)


def vsock():
    rx = []
    for i in range(4):
        rx += chain(2 * i, [(0x20000 + 0x2000 * i, 44, WRITE), (0x21000 + 0x2000 * i, 4096, WRITE)])
    rx_ring = [0, 2, 4, 6]
    # REQUEST to the open port, data, credit request, SHUTDOWN, RST: one descriptor each.
    pkts = [vsock_hdr(5000, 1024, 1), vsock_hdr(5000, 1024, 5, 5) + b"hello",
            vsock_hdr(5000, 1024, 7), vsock_hdr(5000, 1024, 4, flags=3), vsock_hdr(5000, 1024, 3)]
    data, tx, off = b"", [], 0
    for i, p in enumerate(pkts):
        data = put(data, off, p)
        tx.append(desc(DATA + off, len(p)))
        off += 0x100
    write("vsock_packet", "connect-send-close",
          b"\0" + queue(rx, rx_ring) + queue(tx, list(range(len(pkts)))) + payload(data))
    # Header and data in separate descriptors.
    h, d = vsock_hdr(5001, 1024, 5, 3), b"abc"
    data = put(put(vsock_hdr(5001, 1024, 1), 0, b""), 0x100, h)
    data = put(data, 0x200, d)
    tx = [desc(DATA, 44)] + chain(1, [(DATA + 0x100, 44, 0), (DATA + 0x200, 3, 0)])
    write("vsock_packet", "split-layout",
          b"\0" + queue(rx, rx_ring) + queue(tx, [0, 1]) + payload(data))
    # Refusals: a closed port, a wrong CID, a datagram type, unknown connection.
    pkts = [vsock_hdr(6000, 7, 1), vsock_hdr(6000, 1024, 1, src_cid=9),
            vsock_hdr(6000, 1024, 1, typ=2), vsock_hdr(6001, 1024, 5, 2) + b"xy"]
    data, tx, off = b"", [], 0
    for p in pkts:
        data = put(data, off, p)
        tx.append(desc(DATA + off, len(p)))
        off += 0x100
    write("vsock_packet", "refusals",
          b"\0" + queue(rx, rx_ring) + queue(tx, list(range(len(pkts)))) + payload(data))


def rng():
    write("virtio_rng", "fill", b"\0" + queue(chain(0, [(DATA, 64, WRITE)]), [0]) + payload(b""))
    write("virtio_rng", "hostile", b"\0" + queue(
        chain(0, [(DATA, 64, 0)]) + chain(1, [(0x3FFF0, 64, WRITE)]) + [desc(DATA, 64, NEXT | WRITE, 2)],
        [0, 1, 2]) + payload(b""))


def balloon():
    report = chain(0, [(0x20000, 0x1000, WRITE), (0x80000, 0x2000, WRITE),
                       (0x21001, 0x1000, WRITE), (0x3F000, 0x2000, WRITE), (0x22000, 0x1000, 0)])
    write("virtio_balloon", "report", b"\2" + queue(report, [0]) + payload(b""))
    pfns = chain(0, [(DATA, 16, 0)])
    write("virtio_balloon", "inflate", b"\0" + queue(pfns, [0]) + payload(struct.pack("<4I", 1, 2, 3, 4)))


def mmio():
    W4, R4 = 1 | 2 << 1, 2 << 1

    def w(off, v):
        return struct.pack("<BHI", W4, off, v)

    def r(off):
        return struct.pack("<BHI", R4, off, 0)

    init = w(0x70, 1) + w(0x70, 3) + w(0x24, 1) + w(0x20, 1) + w(0x24, 0) + w(0x20, 1) \
        + w(0x70, 11) + r(0x70)
    for sel, base in ((0, 0x1000), (1, 0x8000)):
        init += w(0x30, sel) + w(0x38, 16) + w(0x80, base) + w(0x90, base + 0x1000) \
            + w(0xa0, base + 0x2000) + w(0x44, 1)
    init += w(0x70, 15) + w(0x50, 0) + w(0x64, 1)
    reads = b"".join(r(o) for o in range(0, 0x100, 4)) + struct.pack("<BHI", 2 << 1, 0x100, 0) \
        + struct.pack("<BHI", 1 << 1, 0x102, 0) + struct.pack("<BHI", 1 | 1 << 1, 0x101, 0xAB)
    write("virtio_mmio", "init", init + reads + w(0x70, 0) + init)
    # Out of order: FEATURES_OK with features not offered, queues after DRIVER_OK.
    bad = w(0x70, 1) + w(0x70, 3) + w(0x24, 0) + w(0x20, 0xFFFFFFFF) + w(0x70, 11) + r(0x70) \
        + w(0x70, 15) + w(0x30, 5) + w(0x38, 3) + w(0x44, 1) + w(0x70, 0x8F)
    write("virtio_mmio", "out-of-order", bad)


def agent():
    spec = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sh", "-c", "true"], "cwd": "/", "env": ["PATH=/bin"],
                    "user": {"uid": 0, "gid": 0}, "terminal": False},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "c1",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data", "type": "bind", "source": "/mnt/d",
                    "options": ["rbind", "ro"]},
                   {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "size=65536k"]}],
        "hooks": {"prestart": [{"path": "/bin/evil"}]},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"},
                                 {"type": "network", "path": "/proc/1/ns/net"}],
                  "resources": {"memory": {"limit": 1 << 28}, "cpu": {"shares": 512}},
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]},
    }
    write("agent_spec", "create", b"\0c1\n" + json.dumps(spec).encode())
    bad = json.loads(json.dumps(spec))
    bad["mounts"][1]["destination"] = "/../../etc"
    write("agent_spec", "create-bad-mount", b"\0c-2.x\n" + json.dumps(bad).encode())
    proc = {"args": ["/bin/ls"], "cwd": "/home", "env": ["A=1"], "user": {"uid": 0, "gid": 0}}
    passwd = b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbroken:x\n"
    group = b"root:x:0:\nstaff:x:50:alice,bob\nalice:x:1000:\n"
    write("agent_spec", "user-name", b"\1alice\0" + passwd + b"\0" + group + b"\0" + json.dumps(proc).encode())
    write("agent_spec", "user-numbers", b"\x011000:50\0" + passwd + b"\0" + group + b"\0" + json.dumps(proc).encode())
    write("agent_spec", "user-group-name", b"\1root:staff\0" + passwd + b"\0" + group)
    write("agent_spec", "process", b"\2" + json.dumps(proc).encode())
    fields = [b"c1", b"..", b"a" * 129, b"a/./b/../c", b"../x", b"/etc/passwd",
              b"husk-stdio 0 c1 - stdout", b"husk-stdio 0 c1 e1 stdin",
              b"/run/rootfs", b"", b"erofs", b"", b"/dev/vdb", b"ext4"]
    write("agent_spec", "fields", b"\3" + b"\0".join(fields))


def image():
    def digest(k):
        return "sha256:%064x" % k

    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"],
                                    "Env": ["PATH=/bin"], "WorkingDir": "/", "User": "1000"}}).encode()
    manifest = json.dumps({"schemaVersion": 2,
                           "config": {"digest": digest(2), "size": len(config)},
                           "layers": []}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": digest(1), "size": len(manifest),
         "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}).encode()
    write("image_index", "tagged", b"\0".join([b"oci:/img:v1", index, manifest, config]))
    untagged = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": digest(1), "size": len(manifest)}]}).encode()
    write("image_index", "untagged", b"\0".join([b"", untagged, manifest, config]))
    # index.json -> a multi-platform index -> the amd64 manifest (an attestation aside).
    manifest3 = manifest.replace(digest(2).encode(), digest(3).encode())
    platforms = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": digest(9), "size": 1, "platform": {"os": "linux", "architecture": "arm64",
                                                      "variant": "v8"}},
        {"digest": digest(2), "size": len(manifest3),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": digest(4), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]}).encode()
    top = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": digest(1), "size": len(platforms),
         "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
    write("image_index", "multi-platform", b"\0".join([b"oci:/img", top, platforms, manifest3, config]))
    evil = json.dumps({"manifests": [{"digest": "sha256:../../../etc/passwd", "size": 1,
                                      "annotations": {"org.opencontainers.image.ref.name": "x"}}]}).encode()
    write("image_index", "digest-path", b"\0".join([b"x", evil]))


def fs():
    # Header: flags, the backend's GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM
    # answers, its script (one action per request), then the driver's operations.
    VERSION_1, EVENT_IDX, PROTOCOL = 1 << 32, 1 << 29, 1 << 30
    REPLY_ACK, MQ = 1 << 3, 1 << 0
    full = VERSION_1 | EVENT_IDX | PROTOCOL

    def head(script=b"", flags=0, features=full, protocol=REPLY_ACK | MQ, queue_num=2, tag=b""):
        out = bytes([flags])
        if flags & 4:
            out += bytes([len(tag)]) + tag
        return out + struct.pack("<QQBH", features, protocol, queue_num, len(script)) + script

    def read_config(off, n, high=False):
        return bytes([0x85 if high else 0]) + struct.pack("<HB", off, n)

    def activate(acked=VERSION_1 | EVENT_IDX, layout=0, queues=(4, 4)):
        out = bytes([2, layout]) + struct.pack("<Q", acked)
        for q in queues:
            out += q if isinstance(q, bytes) else bytes([q])
        return out

    FEATURES, RESET, METRICS, PAUSE = b"\1", b"\3", b"\5", b"\6"

    def call(q):
        return bytes([4, q])

    # Requests, numbered: negotiation 0-4 (SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_
    # FEATURES, GET_QUEUE_NUM), activation 5-18 (SET_FEATURES, SET_MEM_TABLE, six per
    # queue), reset 19-22 (SET_VRING_ENABLE and GET_VRING_BASE per queue).
    def at(n, action):
        return b"\0" * n + action

    driver = read_config(0, 40) + FEATURES + activate() + call(1) + call(0) + METRICS \
        + RESET + activate() + call(1) + PAUSE + read_config(0xFFF0, 16, high=True) \
        + read_config(30, 20) + RESET + METRICS
    write("virtio_fs", "handshake-activate-reset", head() + driver)
    # pause() while active with the rings unused (the queues saved at index 0), then
    # after a reset (nothing to save).
    paused = read_config(0, 40) + FEATURES + activate() + PAUSE + call(1) + call(0) + METRICS \
        + RESET + PAUSE + activate() + call(1) + PAUSE + read_config(0xFFF0, 16, high=True) \
        + read_config(30, 20) + RESET + METRICS
    write("virtio_fs", "pause-active-and-idle", head() + paused)
    # pause() after the guest moved a ring's idx (op byte 0x84: which ring, the value):
    # refused as in use; put back, saved; a "move" to 0 is no use.
    def moved(which, value):
        return bytes([0x84, which]) + struct.pack("<H", value)

    used_rings = activate() + moved(0, 1) + PAUSE + moved(3, 0x8000) + moved(1, 0) + RESET \
        + moved(2, 7) + METRICS
    write("virtio_fs", "pause-after-the-guest-used-a-ring", head() + used_rings)
    write("virtio_fs", "no-protocol-features",
          head(features=VERSION_1, protocol=0) + driver)
    write("virtio_fs", "refused-ack", head(at(8, b"\1" + struct.pack("<Q", 1))) + driver)
    write("virtio_fs", "silent-in-activation", head(at(6, b"\6")) + driver)
    write("virtio_fs", "close-in-reset", head(at(20, b"\7")) + driver)
    write("virtio_fs", "mangled-header",
          head(at(1, b"\2" + struct.pack("<IIIQ", 1, 5, 0x2000, full))) + driver)
    write("virtio_fs", "short-reply", head(at(4, b"\3\5" + b"\x11\0\0\0\5"))+ driver)
    write("virtio_fs", "fd-with-reply", head(at(20, b"\4")) + driver)
    write("virtio_fs", "reply-twice", head(at(5, b"\5")) + driver)
    write("virtio_fs", "too-few-queues", head(queue_num=1) + driver)
    raw = bytes([0x24]) + struct.pack("<QQQ", 0xFFFF_FFFF_FFFF_F000, 0x10, 1 << 40)
    hostile = activate(layout=2, queues=(4,)) + RESET + activate(layout=3, queues=(4, 4, 4)) \
        + RESET + activate(acked=(1 << 64) - 1, layout=4, queues=(0x0f, 4)) + call(1) + RESET \
        + activate(queues=(raw, 4)) + call(0) + RESET + activate() + RESET
    write("virtio_fs", "hostile-driver", head(flags=4, tag=b"a" * 36) + hostile)
    write("virtio_fs", "private-memory", head(flags=2) + driver)
    write("virtio_fs", "nine-regions", head(flags=3) + driver)
    write("virtio_fs", "bad-tag", head(flags=4, tag=b"a\0b") + driver)


block(); net(); vsock(); rng(); balloon(); mmio(); fs(); agent(); image()
