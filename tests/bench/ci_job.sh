#!/bin/bash
# Benchmark, run inside the lab by tests/bench/run: a CI-shaped job. The container
# downloads a file from an HTTP server on the host side of its network and writes it
# into a volume (a bind mount of a host folder); `husk run --rm` (default network
# `husk`, `-v`) against `ctr run --rm --cni` with runc (a CNI bridge network of its
# own, `--mount type=bind`), same image, interleaved, RUNS times each; medians, p90 and
# the ratio. Each run's file is checked on the host (size and sha256).
#   ci_job.sh HUSK OCI_LAYOUT OCI_ARCHIVE RUNS MIB OUT_JSON
# The lab's L1 has no network device: every byte stays inside it.
set -euo pipefail
husk=$1 layout=$2 archive=$3 runs=$4 mib=$5 out=$6
work=$(mktemp -d)
# containerd's overlayfs snapshots cannot live on the lab's overlay root: a tmpfs.
mount -t tmpfs tmpfs "$work"
mkdir -p "$work/www" "$work/vol"
head -c "$((mib << 20))" /dev/urandom >"$work/www/blob"
want=$(sha256sum <"$work/www/blob" | cut -d' ' -f1)
# runc's network, for ctr --cni (containerd 1.6's ctr reads /etc/cni/net.d and
# /opt/cni/bin; the L1's root is an overlay on tmpfs, so nothing reaches the host).
mkdir -p /etc/cni/net.d /opt/cni
[ -e /opt/cni/bin ] || ln -s /usr/lib/cni /opt/cni/bin
cat >/etc/cni/net.d/10-bench.conflist <<'JSON'
{"cniVersion": "1.0.0", "name": "bench", "plugins": [
  {"type": "bridge", "bridge": "bench0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
containerd --root "$work/root" --state "$work/state" --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
cpid=$!
httpd_pid=""
cleanup() {
    [ -z "$httpd_pid" ] || kill "$httpd_pid" 2>/dev/null || true
    kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null
    umount -l "$work"; rmdir "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
ctr=(ctr --address "$work/c.sock")
"${ctr[@]}" images import --base-name docker.io/library/busybox "$archive" >/dev/null
image=docker.io/library/busybox:latest
# Warm both (image conversion, snapshot unpack, and each network's bridge, which the
# bridge plugin makes with its gateway address on first use).
"$husk" run --rm -q "oci:$layout" true
"${ctr[@]}" run --rm --cni "$image" warm true
busybox httpd -f -p 0.0.0.0:8000 -h "$work/www" &
httpd_pid=$!
sleep 0.5
now() { date +%s%N; }
check() { # the file the job wrote into the volume
    local got
    got=$(sha256sum <"$work/vol/blob" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { echo "ci_job: $1 wrote a file whose sha256 is $got, not $want" >&2; exit 1; }
    rm -f "$work/vol/blob"
}
job='wget -q -O /work/blob http://$(ip route | awk "/default/ {print \$3; exit}"):8000/blob'
: >"$work/husk"; : >"$work/ctr"
for i in $(seq "$runs"); do
    t=$(now)
    "$husk" run --rm -q -v "$work/vol:/work" "oci:$layout" sh -c "$job"
    echo $(( ($(now) - t) / 1000000 )) >>"$work/husk"
    check "husk run $i"
    t=$(now)
    "${ctr[@]}" run --rm --cni --mount "type=bind,src=$work/vol,dst=/work,options=rbind:rw" \
        "$image" "job$i" sh -c "$job"
    echo $(( ($(now) - t) / 1000000 )) >>"$work/ctr"
    check "ctr run $i"
done
pct() { sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; print a[i]}'; }
h=$(pct "$work/husk" 50) c=$(pct "$work/ctr" 50) h90=$(pct "$work/husk" 90) c90=$(pct "$work/ctr" 90)
printf 'CI-shaped job (download %s MiB from the host over the network into a volume), %s runs each, in the lab:\n' "$mib" "$runs"
printf '  husk run  median %6d ms  p90 %6d ms\n  ctr run   median %6d ms  p90 %6d ms\n  ratio     %6s\n' \
    "$h" "$h90" "$c" "$c90" "$(awk -v a="$h" -v b="$c" 'BEGIN {printf "%.1f", a / b}')"
cat >"$out" <<JSON
{"runs": $runs, "mib": $mib, "husk_ms": {"median": $h, "p90": $h90}, "ctr_runc_ms": {"median": $c, "p90": $c90},
 "husk_all_ms": [$(paste -sd, "$work/husk")], "ctr_all_ms": [$(paste -sd, "$work/ctr")]}
JSON
