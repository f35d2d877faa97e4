#!/bin/bash
# Benchmark, run inside the lab by tests/bench/run: `husk run --rm IMAGE true` end to
# end, restored from a VM template and booted (--no-template), against `ctr run --rm`
# with runc (containerd started here) on the same image, interleaved, RUNS times each;
# medians and p90, the ratios, and husk's phases (--timings). husk runs with --network
# none: `ctr run` makes no network either (no CNI). Then memory: the PSS of 10 idle
# VMs restored from the template against 10 booted ones (docs/snapshots.md).
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
# Warm both (image conversion and the VM template for husk, snapshot unpack for
# containerd).
"$husk" run --rm -q --network none "oci:$layout" true
"${ctr[@]}" run --rm "$image" warm true
now() { date +%s%N; }
: >"$work/husk" ; : >"$work/boot"; : >"$work/ctr"; : >"$work/phases"; : >"$work/boot_phases"
for i in $(seq "$runs"); do
    t=$(now); "$husk" run --rm -q --timings --network none "oci:$layout" true 2>>"$work/phases"; echo $(( ($(now) - t) / 1000000 )) >>"$work/husk"
    t=$(now); "$husk" run --rm -q --timings --network none --no-template "oci:$layout" true 2>>"$work/boot_phases"; echo $(( ($(now) - t) / 1000000 )) >>"$work/boot"
    t=$(now); "${ctr[@]}" run --rm "$image" "b$i" true; echo $(( ($(now) - t) / 1000000 )) >>"$work/ctr"
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
p90() { sort -n "$1" | awk '{a[NR]=$1} END {i=int(NR*0.9+0.999); if (i<1) i=1; print a[i]}'; }
h=$(median "$work/husk") b=$(median "$work/boot") c=$(median "$work/ctr")
# Memory: 10 idle VMs each way (256 MiB each; the first from-template one builds that
# shape's template), the sum of husk-vmm's PSS (shared pages split).
pss_of() { # MODE_FLAG -> total PSS of the running husk-vmm processes, KiB
    local flag=$1 names=() total=0
    for k in $(seq 10); do
        "$husk" run -d -q --network none -m 256m $flag --name "mem$k" "oci:$layout" sleep 600 >/dev/null
        names+=("mem$k")
    done
    sleep 5
    for p in $(pgrep -x husk-vmm); do
        total=$(( total + $(awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup) ))
    done
    for n in "${names[@]}"; do "$husk" rm -f "$n" >/dev/null 2>&1; done
    echo "$total"
}
pss_template=$(pss_of "") pss_boot=$(pss_of --no-template)
phase() { # median of one phase from the --timings lines, in ms
    grep -o "$1 [0-9.]* s" "$work/phases" | awk '{print $(NF-1) * 1000}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}
printf 'husk run --rm true vs ctr run --rm (runc), median (p90) of %s, in the lab:\n' "$runs"
printf '  husk run, template  %6d ms (%d)\n  husk run, booted    %6d ms (%d)\n  ctr run             %6d ms (%d)\n' \
    "$h" "$(p90 "$work/husk")" "$b" "$(p90 "$work/boot")" "$c" "$(p90 "$work/ctr")"
printf '  ratio template/runc %6s, booted/runc %s\n' "$(awk -v a="$h" -v b="$c" 'BEGIN {printf "%.2f", a / b}')" "$(awk -v a="$b" -v b="$c" 'BEGIN {printf "%.2f", a / b}')"
printf '  PSS of 10 idle VMs: from the template %d MiB, booted %d MiB (ratio %s)\n' \
    $(( pss_template / 1024 )) $(( pss_boot / 1024 )) "$(awk -v a="$pss_template" -v b="$pss_boot" 'BEGIN {printf "%.2f", a / b}')"
printf '  husk phases (median ms): image %s, VM start %s, boot+agent ready %s, container start %s, run %s, stop %s\n' \
    "$(phase image)" "$(phase 'VM start')" "$(phase 'agent ready')" "$(phase 'container start')" "$(phase run)" "$(phase stop)"
cat >"$out" <<JSON
{"runs": $runs, "husk_run_ms": $h, "husk_run_p90_ms": $(p90 "$work/husk"),
 "husk_run_booted_ms": $b, "husk_run_booted_p90_ms": $(p90 "$work/boot"),
 "ctr_run_ms": $c, "ctr_run_p90_ms": $(p90 "$work/ctr"),
 "pss_10_idle_template_kib": $pss_template, "pss_10_idle_booted_kib": $pss_boot,
 "phases_ms": {"image": $(phase image), "vm_start": $(phase 'VM start'), "boot_agent_ready": $(phase 'agent ready'),
               "container_start": $(phase 'container start'), "run": $(phase run), "stop": $(phase stop)}}
JSON
