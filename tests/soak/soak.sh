#!/bin/bash
# Soak test, run inside the lab by tests/soak/run (`make soak`, not in CI): KEEP VMs kept
# alive (`husk run -d`) while CYCLES more start and stop, alternating `husk run --rm` on
# the default network and `ctr run --rm` through containerd-shim-husk-v2; then checks
# that nothing leaked: processes (husk-vmm, virtiofsd, husk-jail, shims), mounts under
# /run/husk and /var/lib/husk, taps and veths, network namespaces, IPAM leases, jail
# cgroups, state folders, fds of the kept husk-vmm processes; and that the host's
# memory (MemAvailable, page cache dropped) is back to its start within 32 MiB.
# Prints `CASE name value` lines and a table; writes OUT_JSON.
#   soak.sh BIN_DIR OCI_LAYOUT OCI_ARCHIVE KEEP CYCLES OUT_JSON
set -u
bin_dir=$1 img=$2 archive=$3 keep=$4 cycles=$5 out=$6
export PATH="$bin_dir:$PATH" HUSK_RUN_QUIET=1
case_() { printf 'CASE %s %s\n' "$1" "$2"; }
say() { echo "soak: $*" >&2; }
husk() { timeout -s KILL 300 "$bin_dir/husk" "$@"; }
cgroot=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
leftovers() {
    echo "procs=$(pgrep -x 'husk-vmm|virtiofsd|husk-jail' | wc -l)" \
        "shims=$(pgrep -f containerd-shim-husk-v2 | wc -l)" \
        "mounts=$(grep -c -e ' /run/husk' -e ' /var/lib/husk' /proc/self/mountinfo)" \
        "dirs=$(ls -A /run/husk 2>/dev/null | grep -vc '^\.containerd$')" \
        "pods=$(ls -A /run/husk/.containerd 2>/dev/null | wc -l)" \
        "taps=$(ip -o link show type tun 2>/dev/null | wc -l)" \
        "veths=$(ip -o link show type veth 2>/dev/null | wc -l)" \
        "netns=$(ip netns list 2>/dev/null | wc -l)" \
        "leases=$(ls /var/lib/cni/networks/husk 2>/dev/null | grep -c '^[0-9]')" \
        "cgroups=$(ls -d "$cgroot"/husk/vm-* 2>/dev/null | wc -l)"
}
mem_mib() { sync; echo 3 >/proc/sys/vm/drop_caches; awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo; }
fds() { local p; for p in "$@"; do ls "/proc/$p/fd" 2>/dev/null | wc -l; done | tr '\n' ' '; }

# containerd for the shim's half, on a tmpfs.
work=$(mktemp -d /tmp/husk-soak.XXXXXX)
mount -t tmpfs tmpfs "$work"
containerd --root "$work/root" --state "$work/state" --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
cpid=$!
trap 'kill $cpid 2>/dev/null; wait $cpid 2>/dev/null; pkill -9 -x husk-vmm; umount -l "$work" 2>/dev/null; rmdir "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
ctr() { timeout -s KILL 300 /usr/bin/ctr --address "$work/c.sock" "$@"; }
ctr images import --base-name docker.io/library/busybox "$archive" >/dev/null || { say "ctr import failed"; exit 1; }

# Warm: the image's erofs conversion, the snapshot, the guest image in the page cache.
husk run --rm -m 256m "oci:$img" true || { say "the first husk run failed"; exit 1; }
ctr run --rm --runtime io.containerd.husk.v2 docker.io/library/busybox:latest warm true
base=$(leftovers) mem0=$(mem_mib)
case_ before "$base"
say "start: $base, MemAvailable $mem0 MiB; keeping $keep VMs"
for i in $(seq "$keep"); do
    husk run -d -q -m 256m --name "soak-keep-$i" "oci:$img" sleep 100000 >/dev/null || say "keep $i failed to start"
done
kept=$(pgrep -x husk-vmm | tr '\n' ' ')
fds0=$(fds $kept)
case_ kept "$(echo $kept | wc -w)"
t0=$(date +%s) fails=0
for i in $(seq "$cycles"); do
    if [ $((i % 2)) = 1 ]; then
        husk run --rm -q -m 256m "oci:$img" true || { fails=$((fails + 1)); say "cycle $i (husk run) failed"; }
    else
        ctr run --rm --runtime io.containerd.husk.v2 docker.io/library/busybox:latest "soak-$i" true ||
            { fails=$((fails + 1)); say "cycle $i (ctr run) failed"; }
    fi
    [ $((i % 10)) = 0 ] && say "$i/$cycles cycles, $(( $(date +%s) - t0 )) s, $fails failed"
done
secs=$(( $(date +%s) - t0 ))
case_ cycle_failures "$fails"
alive=0; for p in $kept; do [ -d "/proc/$p" ] && alive=$((alive + 1)); done
case_ kept_alive "$alive"
fds1=$(fds $kept)
case_ kept_fds "$([ "$fds0" = "$fds1" ] && echo same || echo "before: $fds0 after: $fds1")"
for i in $(seq "$keep"); do husk rm -f "soak-keep-$i" >/dev/null || say "rm soak-keep-$i failed"; done
sleep 3
after=$(leftovers) mem1=$(mem_mib)
case_ after "$after"
case_ leaked "$([ "$after" = "$base" ] && echo nothing || echo "before: $base")"
drift=$(( mem1 - mem0 ))
case_ memory "$([ ${drift#-} -le 32 ] && echo back || echo "drift ${drift} MiB")"
printf 'soak: %s kept, %s cycles in %s s (%s failed); leftovers %s; MemAvailable %s -> %s MiB (%+d)\n' \
    "$keep" "$cycles" "$secs" "$fails" "$([ "$after" = "$base" ] && echo none || echo "$after")" "$mem0" "$mem1" "$drift"
cat >"$out" <<JSON
{"keep": $keep, "cycles": $cycles, "seconds": $secs, "failures": $fails, "kept_alive": $alive,
 "kept_fds_before": "$fds0", "kept_fds_after": "$fds1",
 "leftovers_before": "$base", "leftovers_after": "$after",
 "mem_available_mib": {"before": $mem0, "after": $mem1, "drift": $drift}}
JSON
