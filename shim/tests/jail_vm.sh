#!/bin/bash
# Host side of shim/tests/jail_vm.rs, run inside the lab: `husk run` with husk-vmm
# jailed (the default) and with --no-jail; prints `CASE name value` lines.
# Usage: jail_vm.sh HUSK OCI_LAYOUT
set -u
real_husk=$1 img=$2
husk() { timeout -s KILL 300 "$real_husk" "$@"; }
export HUSK_RUN_QUIET=1
# Each case also notes on stderr the seconds since the script began (where CI time goes).
case_() { printf 'CASE %s %s\n' "$1" "$2"; printf 'case %s at %d s\n' "$1" "$SECONDS" >&2; }
leftovers() {
    # (pgrep -x matches names of at most 15 bytes: one pattern per name.)
    echo "vmm=$(( $(pgrep -x husk-vmm | wc -l) + $(pgrep -x husk-jail | wc -l) + $(pgrep -x virtiofsd | wc -l) ))" \
         "dirs=$(ls -A /run/husk 2>/dev/null | wc -l)" \
         "cgroups=$(ls /sys/fs/cgroup/husk 2>/dev/null | grep -c '^vm-')" \
         "mounts=$(grep -c -e /run/husk -e /var/lib/husk /proc/self/mountinfo)"
}
t0=$(date +%s.%N)
out=$(husk run -q "oci:$img" sh -c 'echo hello-jail; exit 7'); case_ exit_stdout "$?_$out"
t1=$(date +%s.%N)
echo "jailed run: $(awk -v a="$t0" -v b="$t1" "BEGIN {printf \"%.1f\", b - a}") s" >&2
case_ after_run "$(leftovers)"
mkdir -p /tmp/jvol && echo host-file >/tmp/jvol/in.txt && rm -f /tmp/jvol/out.txt
out=$(husk run -q -v /tmp/jvol:/data "oci:$img" sh -c 'cat /data/in.txt; echo from-guest >/data/out.txt')
case_ volume "$?_${out}_$(cat /tmp/jvol/out.txt 2>&1)"
case_ after_volume "$(leftovers)"
# The default network (a tap inherited by husk-vmm): the guest's eth0 has the address.
out=$(husk run -q "oci:$img" sh -c 'ip -4 -o addr show eth0 | grep -c "inet 10\."'); case_ network "$?_$out"
t0=$(date +%s.%N)
out=$(husk run -q --no-jail "oci:$img" sh -c 'echo no-jail; exit 5'); case_ no_jail "$?_$out"
t1=$(date +%s.%N)
echo "--no-jail run: $(awk -v a="$t0" -v b="$t1" "BEGIN {printf \"%.1f\", b - a}") s" >&2
case_ after_no_jail "$(leftovers)"
# (The jail's cost, measured back to back: below the emulated lab's noise; see
# docs/testing.md. Not repeated here, to keep CI short.)

# A jailed husk-vmm seen from the host while it runs; then kill -9 of husk.
"$real_husk" run -q --name jv "oci:$img" sleep 600 >/dev/null 2>&1 &
hpid=$!
for _ in $(seq 1200); do [ -S /run/husk/jv/vm/vsock.sock ] && break; sleep 0.1; done
sleep 2
k=$(head -1 /run/husk/jv/vm/pid | cut -d' ' -f1)
v=$(pgrep -x husk-vmm -P "$k")
case_ keeper "$(cat /proc/$k/comm)"
case_ vmm_ids "$(awk '/^(Uid|Gid):/ {print $2}' /proc/$v/status | tr '\n' _)"
case_ vmm_caps "$(awk '/^(CapEff|CapPrm|CapBnd|CapAmb):/ {print $2}' /proc/$v/status | tr '\n' _)"
case_ vmm_nnp_seccomp "$(awk '/^(NoNewPrivs|Seccomp):/ {print $2}' /proc/$v/status | tr '\n' _)"
case_ vmm_nspid "$(awk '/^NSpid:/ {print $NF}' /proc/$v/status)"
case_ vmm_root "$(cd /proc/$v/root && find . -mindepth 1 -maxdepth 1 | sort | tr '\n' ,)"
case_ vmm_dev "$(ls /proc/$v/root/dev | tr '\n' ,)"
cg=/sys/fs/cgroup$(cut -d: -f3 /proc/$v/cgroup)
case_ vmm_cgroup "$(basename "$(dirname "$cg")")_$(cat "$cg/memory.max")_$(cat "$cg/pids.max")"
# The scratch disk's filesystem: a RAM-backed one counts in memory.max (crate::jail).
case_ scratch_fs "$(stat -f -c %T /var/lib/husk/scratch)_$(stat -c %s /var/lib/husk/scratch/jv.img)"
case_ ns "$([ "$(readlink /proc/$v/ns/mnt)" != "$(readlink /proc/self/ns/mnt)" ] && echo mnt)_$([ "$(readlink /proc/$v/ns/ipc)" != "$(readlink /proc/self/ns/ipc)" ] && echo ipc)_$([ "$(readlink /proc/$v/ns/pid)" != "$(readlink /proc/self/ns/pid)" ] && echo pid)"
echo "jail: $(grep -E '^(Uid|CapEff|CapBnd|NoNewPrivs|Seccomp|NSpid)' /proc/$v/status | tr '\t\n' '  '); cgroup $cg" >&2
kill -9 "$hpid"; wait "$hpid" 2>/dev/null
sleep 1
husk ps >/dev/null
case_ after_kill9 "$(leftovers)"
for d in /run/husk/*/vm; do [ -d "$d" ] && { echo "== $d"; tail -5 "$d/vmm.log"; }; done >&2
exit 0
