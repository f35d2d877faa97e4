#!/bin/bash
# Host side of the net test, run inside the lab (as root): makes a tap for the guest
# (10.77.0.1/24; the lab's L1 has no other network, so nothing leaves it), starts
# husk-vmm on it, receives the guest's TCP stream and sends one, prints the results and
# the console, and removes the tap.
#   net-host.sh DIR HUSK_VMM SIZE TUN_KO
set -u
dir=$1 vmm=$2 size=$3 tun_ko=$4
tap=husknet0   # as vm.json says (written by vmm/tests/net.rs)
# Stopped by timeout(1): still show how far the guest got.
trap 'echo "HOST-TIMEOUT"; echo "--- console"; tail -40 "$dir/console.log"; echo "--- vmm log"; tail -20 "$dir/vmm.log"; ip link del "$tap" 2>/dev/null; exit 124' TERM
[ -c /dev/net/tun ] || insmod "$tun_ko" || echo "insmod $tun_ko failed"
[ -e /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
ip tuntap add dev "$tap" mode tap || echo "TAP-FAILED"
ip addr add 10.77.0.1/24 dev "$tap"
ip link set "$tap" up
# Guest -> host receiver.
( socat -u TCP-LISTEN:7001,reuseaddr - | sha256sum | cut -d' ' -f1 > "$dir/g2h.sum" ) &
recv_pid=$!
"$vmm" --config "$dir/vm.json" --report "$dir/report.json" 2>"$dir/vmm.log" &
vmm_pid=$!
for _ in $(seq 6000); do
    grep -q H2G-READY "$dir/console.log" 2>/dev/null && break
    kill -0 "$vmm_pid" 2>/dev/null || break
    sleep 0.2
done
while kill -0 "$recv_pid" 2>/dev/null; do sleep 1; done
echo "G2H-GOT $(cat "$dir/g2h.sum" 2>/dev/null)"
head -c "$size" /dev/urandom > "$dir/h2g"
echo "H2G-SENT $(sha256sum < "$dir/h2g" | cut -d' ' -f1)"
t0=$(date +%s.%N)
socat -u FILE:"$dir/h2g" TCP:10.77.0.2:7002,retry=20,interval=0.5 &
send_pid=$!
while kill -0 "$send_pid" 2>/dev/null; do sleep 1; done
t1=$(date +%s.%N)
echo "H2G-SECONDS $t0 $t1"
rm -f "$dir/h2g"
while kill -0 "$vmm_pid" 2>/dev/null; do sleep 1; done
wait "$vmm_pid"
echo "VMM-EXIT $?"
echo "TAP-STATS $(ip -s link show "$tap" | tr -s ' \n' ' ')"
echo "NET-METRICS $(tr -d ' \n' < "$dir/report.json" | grep -o '"net[0-9]*":{[^}]*}')"
ip link del "$tap"
echo "TAP-LEFT $(ls /sys/class/net | grep -x "$tap")"
echo "--- console"
cat "$dir/console.log"
echo "--- vmm log"
cat "$dir/vmm.log"
