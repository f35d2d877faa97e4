#!/bin/bash
# Host side of the virtio-fs + virtio-net test, run inside the lab (as root; the lab's
# L1 has no network device, so nothing sent here leaves it). Makes the tap
# (10.77.0.1/24) and the virtiofsd share, runs husk-vmm with both devices, exchanges TCP
# streams with the guest, checks what it wrote to the share; then a second, short VM
# rebinds the virtiofs driver. Prints KEY VALUE lines, the console and the logs; leaves
# no tap and no virtiofsd.
#   fs-net-host.sh DIR HUSK_VMM VIRTIOFSD NET_BYTES FS_MIB TUN_KO VMM_TIMEOUT_S
set -u
dir=$1 vmm=$2 virtiofsd=$3 size=$4 fsmib=$5 tun_ko=$6 vmm_timeout=$7
tap=husknet0                # as vm.json says (written by vmm/tests/fs_net.rs)
[ -c /dev/net/tun ] || insmod "$tun_ko" || echo "insmod $tun_ko failed"
[ -e /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
ip tuntap add dev "$tap" mode tap || echo "TAP-FAILED"
ip addr add 10.77.0.1/24 dev "$tap"
ip link set "$tap" up
share=$(mktemp -d /run/husk-fs-share.XXXXXX)
head -c $((fsmib << 20)) /dev/urandom > "$share/host.bin"
echo "HOST-SHA $(sha256sum < "$share/host.bin" | cut -d' ' -f1)"

start_virtiofsd() {
    rm -f "$dir/vfs.sock"
    "$virtiofsd" --socket-path "$dir/vfs.sock" --shared-dir "$share" --sandbox none \
        --cache auto 2>>"$dir/virtiofsd.log" &
    vfs_pid=$!
    for _ in $(seq 100); do [ -S "$dir/vfs.sock" ] && break; sleep 0.1; done
}
# virtiofsd ends when its frontend goes away.
virtiofsd_left() {
    for _ in $(seq 100); do kill -0 "$vfs_pid" 2>/dev/null || { echo no; return; }; sleep 0.1; done
    kill "$vfs_pid"
    echo yes
}

# --- the VM with both devices
start_virtiofsd
( socat -u TCP-LISTEN:7001,reuseaddr - | sha256sum | cut -d' ' -f1 > "$dir/g2h.sum" ) &
recv_pid=$!
timeout -s TERM "$vmm_timeout" "$vmm" --config "$dir/vm.json" --report "$dir/report.json" \
    2>"$dir/vmm.log" &
vmm_pid=$!
for _ in $(seq 6000); do
    grep -q H2G-READY "$dir/console.log" 2>/dev/null && break
    kill -0 "$vmm_pid" 2>/dev/null || break
    sleep 0.2
done
for _ in $(seq 600); do kill -0 "$recv_pid" 2>/dev/null || break; sleep 0.1; done
kill "$recv_pid" 2>/dev/null
wait "$recv_pid" 2>/dev/null
echo "G2H-GOT $(cat "$dir/g2h.sum" 2>/dev/null)"
head -c "$size" /dev/urandom > "$dir/h2g"
echo "H2G-SENT $(sha256sum < "$dir/h2g" | cut -d' ' -f1)"
t0=$(date +%s%N)
timeout 600 socat -u FILE:"$dir/h2g" TCP:10.77.0.2:7002,retry=20,interval=0.5
echo "H2G-MS $(( ($(date +%s%N) - t0) / 1000000 ))"
rm -f "$dir/h2g"
wait "$vmm_pid"
echo "VMM-EXIT $?"
echo "REPORT $(tr -d '\n' < "$dir/report.json" 2>/dev/null)"
echo "VIRTIOFSD-LEFT $(virtiofsd_left)"
echo "HOST-GOT-SHA $(sha256sum < "$share/guest.bin" 2>/dev/null | cut -d' ' -f1)"
echo "HOST-COUNT $(find "$share/many" -type f 2>/dev/null | wc -l)"
echo "TAP-STATS $(ip -s link show "$tap" | tr -s ' \n' ' ')"
echo "--- console"
cat "$dir/console.log"
echo "--- vmm log"
cat "$dir/vmm.log"

# --- a second VM: the guest rebinds the virtiofs driver (reset, second activation)
start_virtiofsd
: >"$dir/console.log"
timeout -s TERM 600 "$vmm" --config "$dir/rebind.json" --report "$dir/rebind-report.json" \
    2>"$dir/vmm-rebind.log"
echo "REBIND-VMM-EXIT $?"
echo "REBIND-REPORT $(tr -d '\n' < "$dir/rebind-report.json" 2>/dev/null)"
echo "REBIND-VIRTIOFSD-LEFT $(virtiofsd_left)"
echo "AFTER-REBIND $(cat "$share/after-rebind" 2>/dev/null)"
echo "--- rebind console"
cat "$dir/console.log"
echo "--- rebind vmm log"
cat "$dir/vmm-rebind.log"
ip link del "$tap"
echo "TAP-LEFT $(ls /sys/class/net | grep -x "$tap")"
rm -rf "$share"
echo "--- virtiofsd log"
tail -20 "$dir/virtiofsd.log"
