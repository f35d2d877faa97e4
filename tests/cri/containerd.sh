# Sourced by tests/tests/cri.sh and tests/bench/cri.sh, inside the lab: a containerd
# with its CRI plugin, runtime handlers `husk` (io.containerd.husk.v2) and `runc`, CNI
# from Debian's containernetworking-plugins (bridge huskcri0 + host-local + portmap +
# loopback, 10.124.0.0/24), on a tmpfs, and busybox imported for CRI (namespace k8s.io)
# as localhost/husk-test/busybox:latest plus its `pause` tag as the sandbox image.
#   cri_start WORK ARCHIVE   start it (WORK: an empty folder; sets $cri_sock, $cri_img)
#   cri_stop                 stop it and remove what it made (VMs, netns, bridge, mounts)
#   cri_ctr ARGS...          ctr in namespace k8s.io
cri_net=husk-cri-test
cri_pause=localhost/husk-test/pause:1
cri_img=localhost/husk-test/busybox:latest

cri_ctr() { timeout -s KILL 300 /usr/bin/ctr --address "$cri_sock" -n k8s.io "$@"; }

cri_start() {
    cri_work=$1
    local archive=$2
    # containerd's overlayfs snapshots cannot live on the lab's overlay root: a tmpfs.
    mount -t tmpfs tmpfs "$cri_work" || return 1
    cri_sock=$cri_work/c.sock
    mkdir -p "$cri_work/cni" "$cri_work/logs" "$cri_work/ipam"
    cat >"$cri_work/cni/10-$cri_net.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "$cri_net", "plugins": [
  {"type": "bridge", "bridge": "huskcri0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.124.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$cri_work/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}]}
EOF
    cat >"$cri_work/config.toml" <<EOF
version = 2
root = "$cri_work/root"
state = "$cri_work/state"
[grpc]
  address = "$cri_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$cri_pause"
  # root here lacks CAP_SYS_RESOURCE (../shared/lab.md): runc could not lower it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$cri_work/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
      runtime_type = "io.containerd.husk.v2"
      privileged_without_host_devices = true
      pod_annotations = ["io.husk.*"]
EOF
    containerd --log-level debug --config "$cri_work/config.toml" >"$cri_work/containerd.log" 2>&1 &
    cri_pid=$!
    for _ in $(seq 100); do [ -S "$cri_sock" ] && break; sleep 0.1; done
    if grep -q 'failed to load plugin io.containerd.grpc.v1.cri' "$cri_work/containerd.log"; then
        grep 'io.containerd.grpc.v1.cri' "$cri_work/containerd.log" >&2
        return 1
    fi
    cri_ctr images import --base-name localhost/husk-test/busybox "$archive" >/dev/null &&
        cri_ctr images tag localhost/husk-test/busybox:pause "$cri_pause" >/dev/null ||
        { tail -30 "$cri_work/containerd.log" >&2; return 1; }
}

cri_stop() {
    kill "$cri_pid" 2>/dev/null; wait "$cri_pid" 2>/dev/null
    pkill -9 -x husk-vmm; pkill -9 -f containerd-shim-husk-v2; pkill -9 -f containerd-shim-runc-v2
    local n
    for n in $(ip netns list | awk '/^cni-/ {print $1}'); do ip netns del "$n"; done
    ip link del huskcri0 2>/dev/null
    grep -o " $cri_work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    umount -l "$cri_work" 2>/dev/null; rmdir "$cri_work"
}
