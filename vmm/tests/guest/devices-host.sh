#!/bin/bash
# Host side of the device test, run inside the lab: starts husk-vmm, serves the guest's
# vsock echo, echoes data through the guest, and prints the results and the console.
#   devices-host.sh DIR HUSK_VMM SIZE
set -u
dir=$1 vmm=$2 size=$3
uds=$dir/v.sock   # as vm.json says (written by vmm/tests/boot.rs)
socat -t 60 UNIX-LISTEN:"${uds}_6000" EXEC:cat &
echo_pid=$!
"$vmm" --config "$dir/vm.json" 2>"$dir/vmm.log" &
vmm_pid=$!
for _ in $(seq 1500); do
    grep -q H2G-READY "$dir/console.log" 2>/dev/null && break
    kill -0 "$vmm_pid" 2>/dev/null || break
    sleep 0.2
done
head -c "$size" /dev/urandom > "$dir/h2g"
echo "H2G-SENT $(sha256sum < "$dir/h2g" | cut -d' ' -f1)"
{ printf 'CONNECT 5000\n'; cat "$dir/h2g"; } | socat -t 60 - UNIX-CONNECT:"$uds" > "$dir/h2g.back"
ok=$(head -1 "$dir/h2g.back")
echo "H2G-OK $ok"
echo "H2G-BACK $(tail -c +$(( ${#ok} + 2 )) "$dir/h2g.back" | sha256sum | cut -d' ' -f1)"
wait "$vmm_pid"
echo "VMM-EXIT $?"
kill "$echo_pid" 2>/dev/null
echo "SOCKET-LEFT $(ls "$uds" 2>/dev/null)"
echo "--- console"
cat "$dir/console.log"
echo "--- vmm log"
cat "$dir/vmm.log"
