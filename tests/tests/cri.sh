#!/bin/bash
# Host side of tests/tests/cri.rs, run inside the lab: containerd's CRI plugin with the
# `husk` runtime handler and CNI (tests/cri/containerd.sh), then the CRI test driver
# (husk-cri-driver) plays the kubelet. Cases are `CASE name value` lines on stdout (the
# driver's and this script's), measurements `MEASURE ...` lines on stderr.
# Usage: cri.sh BIN_DIR OCI_ARCHIVE
#   BIN_DIR holds containerd-shim-husk-v2 (with husk-vmm beside it) and husk-cri-driver.
set -u
bin_dir=$1 archive=$2
export PATH="$bin_dir:$PATH"
. "$(dirname "$0")/../cri/containerd.sh"
# Each case also notes on stderr the seconds since the script began (where CI time goes).
case_() { printf 'CASE %s %s\n' "$1" "$(echo "$2" | tr '\n' ' ' | sed 's/ *$//')"; printf 'case %s at %d s\n' "$1" "$SECONDS" >&2; }
work=$(mktemp -d /tmp/husk-cri-test.XXXXXX)
trap cri_stop EXIT
cri_start "$work" "$archive" || exit 1
# What a pod may leave behind: processes, mounts, husk's folders, taps, CNI's namespaces
# and leases.
leftovers() {
    echo "vmm=$(pgrep -x husk-vmm | wc -l) virtiofsd=$(pgrep -x virtiofsd | wc -l)" \
        "shims=$(pgrep -f containerd-shim-husk-v2 | wc -l)" \
        "mounts=$(grep -c ' /run/husk' /proc/self/mountinfo)" \
        "dirs=$(ls /run/husk/.containerd 2>/dev/null | wc -l)" \
        "netns=$(ip netns list | grep -c '^cni-')" \
        "leases=$(find "$work/ipam" -type f -name '10.*' | wc -l)" \
        "veths=$(ip -o link show master huskcri0 2>/dev/null | wc -l)"
}
case_ before "$(leftovers)"
t0=$(date +%s)
husk-cri-driver test "$cri_sock" "$cri_img" "$work/logs"
echo "MEASURE driver $(( $(date +%s) - t0 )) s" >&2
sleep 2
case_ after "$(leftovers)"
grep -E "level=(error|warning)" "$work/containerd.log" | grep -vE "devmapper|aufs|zfs|btrfs|tracing" | tail -40 >&2
exit 0
