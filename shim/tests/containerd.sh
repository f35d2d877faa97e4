#!/bin/bash
# Host side of shim/tests/containerd.rs, run inside the lab: Debian's containerd
# (1.6.20), started here on a tmpfs, runs containers with `io.containerd.husk.v2`
# (containerd-shim-husk-v2 on PATH). Cases are printed as `CASE name value` lines the
# Rust test checks; measurements as `MEASURE ...` lines.
# Usage: containerd.sh SHIM_DIR OCI_ARCHIVE
set -u
shim_dir=$1 archive=$2
export PATH="$shim_dir:$PATH"
R=io.containerd.husk.v2
work=$(mktemp -d /tmp/husk-containerd-test.XXXXXX)
# containerd's overlayfs snapshots cannot live on the lab's overlay root: a tmpfs.
mount -t tmpfs tmpfs "$work"
# Each case also notes on stderr the seconds since the script began (where CI time goes).
case_() { printf 'CASE %s %s\n' "$1" "$(echo "$2" | tr '\n' ' ' | sed 's/ *$//')"; printf 'case %s at %d s\n' "$1" "$SECONDS" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
diag() {
    { echo "--- $*"; ps -eo pid,ppid,stat,etime,args | grep -E "husk|virtiofsd|containerd" | grep -v grep
      for d in /run/husk/.containerd/*; do [ -d "$d" ] && { echo "== $d"; tail -5 "$d/console.log"; tail -5 "$d/vmm.log"; }; done
      tail -30 "$work/containerd.log"; } >&2
}
containerd --log-level debug --root "$work/root" --state "$work/state" --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
cpid=$!
cleanup() {
    kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null
    pkill -9 -x husk-vmm; pkill -9 -f containerd-shim-husk-v2
    grep -o " $work[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    umount -l "$work"; rmdir "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
ctr() { timeout -s KILL 300 /usr/bin/ctr --address "$work/c.sock" "$@"; local rc=$?; [ $rc = 137 ] && diag "ctr $* was killed after 300 s"; return $rc; }
ctr images import --base-name docker.io/library/busybox "$archive" >/dev/null || { diag import; exit 1; }
img=docker.io/library/busybox:latest
# What a pod may leave behind: processes, mounts, husk's folders.
leftovers() {
    echo "vmm=$(pgrep -x husk-vmm | wc -l) virtiofsd=$(pgrep -x virtiofsd | wc -l)" \
        "shims=$(pgrep -f containerd-shim-husk-v2 | wc -l)" \
        "mounts=$(grep -c ' /run/husk' /proc/self/mountinfo)" \
        "cgroups=$(ls -d "$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)"/husk/vm-* 2>/dev/null | wc -l)" \
        "dirs=$(ls /run/husk/.containerd 2>/dev/null | wc -l)"
}
case_ before "$(leftovers)"

# Exit codes.
t=$(now)
ctr run --rm --runtime $R $img rc sh -c 'exit 3'
case_ exit_code "$?"
echo "MEASURE first_run $(took "$t") s" >&2
case_ after_rc "$(leftovers)"

# Env and stdin.
out=$(echo piped-in | ctr run --rm --runtime $R --env FOO=bar $img envin sh -c 'echo FOO=$FOO; cat')
case_ env_stdin "$? $out"

# 10 MiB of stdout, byte for byte.
want=$(seq 1 1500000 | md5sum | cut -d' ' -f1)
t=$(now)
got=$(ctr run --rm --runtime $R $img big seq 1 1500000 | md5sum | cut -d' ' -f1)
case_ big_stdout "$([ "$got" = "$want" ] && echo equal || echo "differs: $got")"
case_ big_size "$(seq 1 1500000 | wc -c)"
echo "MEASURE big_stdout $(took "$t") s" >&2

# A binary:// logger (containerd's protocol: stdout on fd 3, stderr on fd 4, fd 5
# closed when ready, CONTAINER_ID and CONTAINER_NAMESPACE).
cat >"$work/logger" <<'LOGGER'
#!/bin/sh
exec 5>&-
cat <&3 >"$2.out" &
cat <&4 >"$2.err"
wait
echo "$CONTAINER_NAMESPACE/$CONTAINER_ID" >"$2.env"
LOGGER
chmod +x "$work/logger"
ctr run --rm --runtime $R --log-uri "binary://$work/logger?--to=$work/lg" $img lg sh -c 'echo out-line; echo err-line >&2'
rc=$?
for _ in $(seq 50); do [ -s "$work/lg.env" ] && break; sleep 0.2; done
case_ binary_logger "$rc $(cat "$work/lg.out" "$work/lg.err" "$work/lg.env" 2>&1)"

# A terminal.
# (script's terminal gets a size first: ctr -t hands the container its own.)
out=$(SHELL=/bin/sh script -qec "stty rows 40 cols 100; timeout --foreground -s KILL 300 /usr/bin/ctr --address $work/c.sock run --rm -t --runtime $R $img tty sh -c 'tty; echo size=\$(stty size)'" /dev/null </dev/null | tr -d '\r')
case_ tty "$(echo "$out" | grep -c '/dev/pts/') $(echo "$out" | grep -o 'size=[0-9 ]*' | tr ' ' _)"

# A detached task: it outlives its ctr; exec (also -t), ps, pause/resume, metrics.
ctr run -d --runtime $R $img d1 sh -c 'echo started; exec sleep 1000' >/dev/null
case_ detached "$? $(ctr task ls | awk '$1 == "d1" {print $3}')"
vmm=$(ctr task ls | awk '$1 == "d1" {print $2}')
# The task's pid is husk-vmm's jail keeper (husk-jail, crate::jail), husk-vmm its child
# under an unprivileged uid.
case_ task_pid_is_vmm "$(cat /proc/$vmm/comm 2>/dev/null) $(cat /proc/$(pgrep -P $vmm | head -1)/comm 2>/dev/null) uid=$(awk '/^Uid:/ {print ($2 >= 100000) ? "unprivileged" : $2}' /proc/$(pgrep -x husk-vmm | head -1)/status)"
out=$(ctr task exec --exec-id e1 d1 sh -c 'echo exec-out; exit 4')
case_ exec "$? $out"
out=$(SHELL=/bin/sh script -qec "stty rows 40 cols 100; timeout --foreground -s KILL 300 /usr/bin/ctr --address $work/c.sock task exec -t --exec-id e2 d1 tty" /dev/null </dev/null | tr -d '\r')
case_ exec_tty "$(echo "$out" | grep -c '/dev/pts/')"
case_ ps "$(ctr task ps d1 | tail -n +2 | wc -l)"
ctr task pause d1; case_ pause "$? $(ctr task ls | awk '$1 == "d1" {print $3}')"
ctr task resume d1; case_ resume "$? $(ctr task ls | awk '$1 == "d1" {print $3}')"
out=$(ctr task metrics d1)
case_ metrics "$? $(echo "$out" | grep -cE 'memory|pids')"

# A second container in d1's pod (one VM), in d1's pid namespace.
ctr run -d --runtime $R --annotation io.kubernetes.cri.container-type=container \
    --annotation io.kubernetes.cri.sandbox-id=d1 --with-ns "pid:/proc/$vmm/ns/pid" \
    $img d2 sleep 2000 >/dev/null
case_ pod_second "$? $(ctr task ls | awk '$1 == "d2" {print $3}') vmm=$(pgrep -x husk-vmm | wc -l)"
case_ pod_same_pid "$([ "$(ctr task ls | awk '$1 == "d2" {print $2}')" = "$vmm" ] && echo yes || echo no)"
out=$(ctr task exec --exec-id e3 d2 ps -o args)
case_ pod_sees_first "$(echo "$out" | grep -c 'sleep 1000')"
out=$(ctr task exec --exec-id e4 d2 sh -c 'echo two > /only-in-d2; ls /only-in-d2')
ctr task exec --exec-id e5 d1 ls /only-in-d2 >/dev/null 2>&1
case_ pod_own_roots "$?"
# A third, in the pod but in no namespace of the first's: the first's end (and with
# it the second's, in its pid namespace) leaves it running in the pod's VM.
ctr run -d --runtime $R --annotation io.kubernetes.cri.container-type=container \
    --annotation io.kubernetes.cri.sandbox-id=d1 $img d3 sleep 3000 >/dev/null
ctr task kill -s KILL d1
state() { ctr task ls | awk -v id="$1" '$1 == id {print $3}'; }
for _ in $(seq 30); do [ "$(state d1)$(state d2)" = STOPPEDSTOPPED ] && break; sleep 1; done
case_ pod_first_killed "$(state d1) $(state d2) $(state d3)"
ctr task rm d1 >/dev/null; ctr c rm d1
ctr task rm d2 >/dev/null; ctr c rm d2
sleep 3
case_ pod_survives_first "$(state d3) $(ctr task exec --exec-id e6 d3 echo alive) vmm=$(pgrep -x husk-vmm | wc -l)"
ctr task kill -s KILL d3
for _ in $(seq 30); do [ "$(state d3)" = STOPPED ] && break; sleep 1; done
ctr task rm d3 >/dev/null; ctr c rm d3
sleep 2
case_ after_pod "$(leftovers)"

# A file the container writes lands in its snapshot.
ctr run --runtime $R $img w1 sh -c 'echo persisted > /written'
mkdir -p "$work/m"
eval "$(ctr snapshot mounts "$work/m" w1)"
case_ snapshot "$(cat "$work/m/written" 2>&1)"
umount "$work/m"
ctr c rm w1
case_ after_snapshot "$(leftovers)"

# The pod's network: a namespace the test made (a veth to the L1, as CNI's bridge
# plugin would make), named by the spec; the VM's NIC takes its address and routes.
pn=husk-ctrd-pod
ip netns add $pn
ip link add hpod0 type veth peer name eth0 netns $pn
ip addr add 10.123.0.1/24 dev hpod0 && ip link set hpod0 up
ip -n $pn addr add 10.123.0.2/24 dev eth0 && ip -n $pn link set eth0 up && ip -n $pn link set lo up
ip -n $pn route add default via 10.123.0.1
mkdir -p "$work/www" && echo hello-pod >"$work/www/hello.txt"
busybox httpd -f -p 10.123.0.1:8081 -h "$work/www" &
hpid=$!
out=$(ctr run --rm --runtime $R --with-ns "network:/var/run/netns/$pn" $img net1 sh -c '
echo ADDR=$(ip -4 addr show eth0 | grep -o "inet [0-9./]*" | tr " " _)
echo ROUTE=$(ip route | grep default | cut -d" " -f1-3 | tr " " _)
echo GET=$(timeout 30 wget -q -O - http://10.123.0.1:8081/hello.txt 2>&1)' 2>&1)
case_ pod_net "$? $out"
case_ pod_net_after "ingress=$(tc -n $pn qdisc show | grep -c ingress) taps=$(ip -n $pn -o link show type tun | wc -l)"
# Kubernetes' port-forward: containerd's CRI dials localhost:PORT inside the pod's
# namespace on the host; the shim's REDIRECT sends it to the same port in the VM.
# (Outside CRI's sandboxes only when asked: io.husk.port-forward=true.)
ctr run -d --runtime $R --annotation io.husk.port-forward=true \
    --with-ns "network:/var/run/netns/$pn" $img pf1 sh -c '
mkdir -p /www && echo hello-forward >/www/f.txt && exec httpd -f -p 8080 -h /www' >/dev/null
got=""
for _ in $(seq 60); do
    got=$(ip netns exec $pn timeout 20 busybox wget -q -O - http://127.0.0.1:8080/f.txt 2>/dev/null) &&
        [ -n "$got" ] && break
    sleep 1
done
# A port nothing in the VM listens on: the connection closes, no hang.
refused=$(ip netns exec $pn timeout 20 busybox wget -q -O - http://127.0.0.1:8081/ >/dev/null 2>&1; echo $?)
case_ port_forward "$got rules=$(ip netns exec $pn iptables -w -t nat -S OUTPUT | grep -c husk-portforward) refused=$([ "$refused" != 0 ] && [ "$refused" != 124 ] && echo yes || echo "no($refused)")"
ctr task kill -s KILL pf1
for _ in $(seq 30); do [ "$(ctr task ls | awk '$1 == "pf1" {print $3}')" = STOPPED ] && break; sleep 1; done
ctr task rm pf1 >/dev/null; ctr c rm pf1
sleep 2
case_ port_forward_after "rules=$(ip netns exec $pn iptables -w -t nat -S OUTPUT | grep -c husk-portforward) ingress=$(tc -n $pn qdisc show | grep -c ingress)"
kill $hpid; ip netns del $pn; ip link del hpod0 2>/dev/null
# The host's own namespace named as the pod's: refused (its interface would go to the VM).
out=$(ctr run --rm --runtime $R --with-ns "network:/proc/1/ns/net" $img hostns true 2>&1)
case_ host_netns_path "$? $(echo "$out" | grep -c "host's own network namespace") $(ip -o link show | grep -c 'state UP')"
# The host's network (hostNetwork, ctr --net-host) cannot be a VM's: refused by name.
out=$(ctr run --rm --runtime $R --net-host $img hostnet true 2>&1)
case_ host_network "$? $(echo "$out" | grep -c "host's network namespace")"
case_ after_net "$(leftovers)"

# kill -9 of husk-vmm mid-run: ctr sees the exit (255), --rm frees everything.
ctr run --rm --runtime $R $img k1 sleep 1000 &
rpid=$!
for _ in $(seq 120); do [ "$(ctr task ls | awk '$1 == "k1" {print $3}')" = RUNNING ] && break; sleep 1; done
pkill -9 -x husk-vmm
wait $rpid
case_ vmm_killed "$?"
sleep 2
case_ after_vmm_kill "$(leftovers)"

# kill -9 of the shim: containerd's delete cleans up.
ctr run -d --runtime $R $img s1 sleep 1000 >/dev/null
shim=$(pgrep -f "containerd-shim-husk-v2 .*-id s1" | head -1)
case_ shim_found "$([ -n "$shim" ] && echo yes)"
kill -9 "$shim"
sleep 3
ctr task rm -f s1 >/dev/null 2>&1
ctr c rm s1
sleep 2
case_ after_shim_kill "$(leftovers) $(ctr c ls -q | wc -l)"
# Pods' VMs are restored from VM templates (the first pod of each shape built its
# own); none booted because a restore failed.
grep "starting the pod's VM" "$work/containerd.log" | head -2 >&2
case_ pods_restored "$(grep "starting the pod's VM" "$work/containerd.log" | grep -c 'restore=true')"
case_ pods_booted "$(grep "starting the pod's VM" "$work/containerd.log" | grep -c 'restore=false')"
case_ restore_failed "$(grep -c 'did not restore from its template' "$work/containerd.log")"
grep -E "stdin|level=(error|warning)" "$work/containerd.log" | grep -vE "plugin|cni|devmapper" | tail -40 >&2
exit 0
