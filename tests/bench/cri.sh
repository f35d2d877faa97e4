#!/bin/bash
# Benchmark, run inside the lab by tests/bench/run: pods through containerd's CRI plugin
# with the `husk` handler against `runc` (tests/cri/containerd.sh: same containerd, CNI,
# image), driven by husk-cri-driver's bench mode: pod start medians and p90, 10 pods at
# once.
#   cri.sh BIN_DIR OCI_ARCHIVE RUNS OUT_JSON
#   BIN_DIR holds containerd-shim-husk-v2 (husk-vmm beside it) and husk-cri-driver.
set -u
bin_dir=$1 archive=$2 runs=$3 out=$4
export PATH="$bin_dir:$PATH"
. "$(dirname "$0")/../cri/containerd.sh"
work=$(mktemp -d /tmp/husk-cri-bench.XXXXXX)
trap cri_stop EXIT
cri_start "$work" "$archive" || exit 1
husk-cri-driver bench "$cri_sock" "$cri_img" "$work/logs" "$runs" "$out"
