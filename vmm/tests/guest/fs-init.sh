#!/bin/sh
# /init of the virtio-fs test guest (vmm/tests/fs.rs): mounts the share, reads the file
# the host wrote, writes one back, creates many small files, and reports on the console
# (times in milliseconds, from /proc/uptime), then powers off. With husk.mode=rebind on
# the command line it instead reads the file, unbinds and rebinds the driver (a device
# reset, then a second activation) and reads it again.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
files=$(sed -n 's/.*husk.files=\([0-9]*\).*/\1/p' /proc/cmdline)
mkdir -p /mnt
if ! mount -t virtiofs hostshare /mnt; then
    echo "MOUNT-FAILED"
    poweroff -f
fi
echo "MOUNTED"
if grep -q husk.mode=rebind /proc/cmdline; then
    echo "READ-SHA $(sha256sum /mnt/host.bin | cut -d' ' -f1)"
    umount /mnt
    drv=/sys/bus/virtio/drivers/virtiofs
    dev=$(basename "$(ls -d "$drv"/virtio* | head -1)")
    echo "$dev" > "$drv/unbind" && echo "UNBOUND $dev"
    echo "$dev" > "$drv/bind" && echo "BOUND $dev"
    if mount -t virtiofs hostshare /mnt; then
        echo "REBIND-SHA $(sha256sum /mnt/host.bin | cut -d' ' -f1)"
        echo after > /mnt/after-rebind
        umount /mnt
    fi
    echo "FS-DONE"
    poweroff -f
fi
t0=$(ms)
echo "READ-SHA $(sha256sum /mnt/host.bin | cut -d' ' -f1)"
t1=$(ms)
echo "READ-MS $((t1 - t0))"
head -c $((64 << 20)) /dev/urandom > /tmp/guest.bin
echo "WRITE-SHA $(sha256sum /tmp/guest.bin | cut -d' ' -f1)"
t0=$(ms)
cp /tmp/guest.bin /mnt/guest.bin && sync
t1=$(ms)
echo "WRITE-MS $((t1 - t0))"
rm /tmp/guest.bin
mkdir /mnt/many
t0=$(ms)
i=0
while [ "$i" -lt "$files" ]; do
    echo "$i" > "/mnt/many/f$i"
    i=$((i + 1))
    # Progress, so that a slow run can be told from a stuck one.
    [ $((i % 1000)) -eq 0 ] && echo "FILES-PROGRESS $i $(( $(ms) - t0 ))"
done
sync
t1=$(ms)
echo "FILES-MS $((t1 - t0))"
echo "GUEST-COUNT $(ls /mnt/many | wc -l)"
umount /mnt
echo "FS-DONE"
poweroff -f
