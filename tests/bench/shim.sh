#!/bin/bash
# Benchmark, run inside the lab by tests/bench/run: containerd's `ctr run --rm IMAGE
# true` with husk's shim (io.containerd.husk.v2) against runc, same containerd, same
# image, interleaved, RUNS times each: medians, p90 and the ratio. The shim's pods
# restore from a VM template (the default; the warm-up run builds it) and, in runs of
# their own, boot (`[vm] templates = false` in /etc/husk/config.toml for that run).
# Then the host memory of one idle pod (a detached `sleep`, restored): PSS of the shim,
# husk-vmm (its PSS holds the guest pages the VM touched) and virtiofsd, the shim's RSS
# apart.
#   shim.sh SHIM_DIR OCI_ARCHIVE RUNS OUT_JSON
set -euo pipefail
shim_dir=$1 archive=$2 runs=$3 out=$4
export PATH="$shim_dir:$PATH"
work=$(mktemp -d)
# containerd's overlayfs snapshots cannot live on the lab's overlay root: a tmpfs.
mount -t tmpfs tmpfs "$work"
containerd --root "$work/root" --state "$work/state" --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
cpid=$!
made_conf=
trap '[ -n "$made_conf" ] && rm -f /etc/husk/config.toml; kill $cpid 2>/dev/null; wait $cpid 2>/dev/null; umount -l "$work"; rmdir "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
ctr=(ctr --address "$work/c.sock")
"${ctr[@]}" images import --base-name docker.io/library/busybox "$archive" >/dev/null
image=docker.io/library/busybox:latest
R=io.containerd.husk.v2
# Warm both (snapshot unpack, page cache of the guest image).
"${ctr[@]}" run --rm --runtime $R "$image" warm1 true
"${ctr[@]}" run --rm "$image" warm2 true
now() { date +%s%N; }
: >"$work/husk"; : >"$work/runc"; : >"$work/booted"
conf=/etc/husk/config.toml
[ -e $conf ] && { echo "shim.sh: $conf exists in the lab; refusing to change it" >&2; exit 1; }
mkdir -p /etc/husk
made_conf=1
for i in $(seq "$runs"); do
    t=$(now); "${ctr[@]}" run --rm --runtime $R "$image" "h$i" true; echo $(( ($(now) - t) / 1000000 )) >>"$work/husk"
    t=$(now); "${ctr[@]}" run --rm "$image" "r$i" true; echo $(( ($(now) - t) / 1000000 )) >>"$work/runc"
    printf '[vm]\ntemplates = false\n' >$conf
    t=$(now); "${ctr[@]}" run --rm --runtime $R "$image" "b$i" true; echo $(( ($(now) - t) / 1000000 )) >>"$work/booted"
    rm -f $conf
done
pct() { sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; print a[i]}'; }
h=$(pct "$work/husk" 50) r=$(pct "$work/runc" 50) h90=$(pct "$work/husk" 90) r90=$(pct "$work/runc" 90)
b=$(pct "$work/booted" 50) b90=$(pct "$work/booted" 90)
printf 'ctr run --rm IMAGE true, husk shim vs runc, %s runs each, in the lab:\n' "$runs"
printf '  husk (template)  median %6d ms  p90 %6d ms\n  husk (booted)    median %6d ms  p90 %6d ms\n  runc             median %6d ms  p90 %6d ms\n  ratio (template) %6s\n  ratio (booted)   %6s\n' \
    "$h" "$h90" "$b" "$b90" "$r" "$r90" "$(awk -v a="$h" -v b="$r" 'BEGIN {printf "%.1f", a / b}')" "$(awk -v a="$b" -v b="$r" 'BEGIN {printf "%.1f", a / b}')"
# One idle pod.
"${ctr[@]}" run -d --runtime $R "$image" idle sleep 100000 >/dev/null
sleep 10
kib() { awk -v k="$2" '$1 == k":" {s += $2} END {print s + 0}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
sum_pss() { local t=0 p; for p in "$@"; do t=$(( t + $(kib "$p" Pss) )); done; echo $t; }
shim=$(pgrep -f "containerd-shim-husk-v2 .*-id idle" | head -1)
vmm=$(pgrep -x husk-vmm | head -1)
vfs=$(pgrep -x virtiofsd | tr '\n' ' ')
shim_pss=$(sum_pss $shim) shim_rss=$(kib $shim Rss) vmm_pss=$(sum_pss $vmm) vfs_pss=$(sum_pss $vfs)
total=$(( shim_pss + vmm_pss + vfs_pss ))
printf 'one idle pod (busybox sleep), host memory (PSS, MiB): total %s = husk-vmm %s (guest pages touched included) + virtiofsd %s + shim %s; shim RSS %s MiB\n' \
    "$((total / 1024))" "$((vmm_pss / 1024))" "$((vfs_pss / 1024))" "$((shim_pss / 1024))" "$((shim_rss / 1024))"
"${ctr[@]}" task kill -s KILL idle
for _ in $(seq 30); do [ "$("${ctr[@]}" task ls | awk '$1 == "idle" {print $3}')" = STOPPED ] && break; sleep 1; done
"${ctr[@]}" task rm idle >/dev/null; "${ctr[@]}" c rm idle
cat >"$out" <<JSON
{"runs": $runs, "husk_ms": {"median": $h, "p90": $h90}, "husk_booted_ms": {"median": $b, "p90": $b90},
 "runc_ms": {"median": $r, "p90": $r90},
 "idle_pod_pss_kib": {"total": $total, "husk_vmm": $vmm_pss, "virtiofsd": $vfs_pss, "shim": $shim_pss},
 "shim_rss_kib": $shim_rss}
JSON
