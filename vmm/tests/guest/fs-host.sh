#!/bin/bash
# Host side of the virtio-fs test, run inside the lab: starts virtiofsd on a fresh
# folder, writes the file the guest reads, runs husk-vmm, then checks what the guest
# wrote and that virtiofsd ended with the VM.
#   fs-host.sh DIR HUSK_VMM VIRTIOFSD HOST_FILE_MIB
set -u
dir=$1 vmm=$2 virtiofsd=$3 mib=$4
sock=$dir/vfs.sock   # as vm.json says (written by vmm/tests/fs.rs)
share=$(mktemp -d /run/husk-fs-share.XXXXXX)
head -c $((mib << 20)) /dev/urandom > "$share/host.bin"
echo "HOST-SHA $(sha256sum < "$share/host.bin" | cut -d' ' -f1)"
"$virtiofsd" --socket-path "$sock" --shared-dir "$share" --sandbox none \
    --cache auto 2>"$dir/virtiofsd.log" &
vfs_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && break
    sleep 0.1
done
start=$(date +%s%N)
# Bounded below the lab's own timeout, so that a slow or stuck guest still leaves the
# console and logs below in the output.
timeout "${HUSK_FS_VMM_TIMEOUT:-1200}" \
    "$vmm" --config "$dir/vm.json" --report "$dir/report.json" 2>"$dir/vmm.log"
echo "VMM-EXIT $?"
echo "REPORT $(tr -d '\n' < "$dir/report.json" 2>/dev/null)"
echo "VMM-SECONDS $(( ($(date +%s%N) - start) / 1000000000 ))"
# virtiofsd ends when its frontend goes away.
for _ in $(seq 100); do
    kill -0 "$vfs_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$vfs_pid" 2>/dev/null; then
    echo "VIRTIOFSD-LEFT yes"
    kill "$vfs_pid"
else
    echo "VIRTIOFSD-LEFT no"
fi
echo "HOST-GOT-SHA $(sha256sum < "$share/guest.bin" 2>/dev/null | cut -d' ' -f1)"
echo "HOST-COUNT $(find "$share/many" -type f 2>/dev/null | wc -l)"
echo "AFTER-REBIND $(cat "$share/after-rebind" 2>/dev/null)"
rm -rf "$share"
echo "--- console"
cat "$dir/console.log"
echo "--- vmm log"
cat "$dir/vmm.log"
echo "--- virtiofsd log"
tail -20 "$dir/virtiofsd.log"
