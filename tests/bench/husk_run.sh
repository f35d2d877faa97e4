#!/bin/bash
# Benchmark, run inside the lab by tests/bench/run: `husk run --rm IMAGE true` end to
# end against `ctr run --rm` with runc (containerd started here) on the same image,
# interleaved, RUNS times each; medians, the ratio, and husk's phases (--timings).
# husk runs with --network none: `ctr run` makes no network either (no CNI).
#   husk_run.sh HUSK OCI_LAYOUT OCI_ARCHIVE RUNS OUT_JSON
set -euo pipefail
husk=$1 layout=$2 archive=$3 runs=$4 out=$5
work=$(mktemp -d)
# containerd's overlayfs snapshots cannot live on the lab's overlay root: a tmpfs.
mount -t tmpfs tmpfs "$work"
containerd --root "$work/root" --state "$work/state" --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
cpid=$!
trap 'kill $cpid 2>/dev/null; wait $cpid 2>/dev/null; umount -l "$work"; rmdir "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
ctr=(ctr --address "$work/c.sock")
"${ctr[@]}" images import --base-name docker.io/library/busybox "$archive" >/dev/null
image=docker.io/library/busybox:latest
"${ctr[@]}" images ls -q | grep -qx "$image" || { echo "import failed" >&2; exit 1; }
# Warm both (image conversion for husk, snapshot unpack for containerd).
"$husk" run --rm -q "oci:$layout" true
"${ctr[@]}" run --rm "$image" warm true
now() { date +%s%N; }
: >"$work/husk" ; : >"$work/ctr"; : >"$work/phases"
for i in $(seq "$runs"); do
    t=$(now); "$husk" run --rm -q --timings --network none "oci:$layout" true 2>>"$work/phases"; echo $(( ($(now) - t) / 1000000 )) >>"$work/husk"
    t=$(now); "${ctr[@]}" run --rm "$image" "b$i" true; echo $(( ($(now) - t) / 1000000 )) >>"$work/ctr"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
h=$(median "$work/husk") c=$(median "$work/ctr")
phase() { # median of one phase from the --timings lines, in ms
    grep -o "$1 [0-9.]* s" "$work/phases" | awk '{print $(NF-1) * 1000}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
printf 'husk run --rm true vs ctr run --rm (runc), median of %s, in the lab:\n' "$runs"
printf '  husk run  %6d ms\n  ctr run   %6d ms\n  ratio     %6s\n' "$h" "$c" "$(awk -v a="$h" -v b="$c" 'BEGIN {printf "%.1f", a / b}')"
printf '  husk phases (median ms): image %s, VM start %s, boot+agent ready %s, container start %s, run %s, stop %s\n' \
    "$(phase image)" "$(phase 'VM start')" "$(phase 'agent ready')" "$(phase 'container start')" "$(phase run)" "$(phase stop)"
cat >"$out" <<JSON
{"runs": $runs, "husk_run_ms": $h, "ctr_run_ms": $c,
 "phases_ms": {"image": $(phase image), "vm_start": $(phase 'VM start'), "boot_agent_ready": $(phase 'agent ready'),
               "container_start": $(phase 'container start'), "run": $(phase run), "stop": $(phase stop)}}
JSON
