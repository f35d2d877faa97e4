#!/bin/sh
# /init of the virtio-fs + virtio-net test guest (vmm/tests/fs_net.rs). One VM with both
# devices: eth0 (virtio-net on the host's tap) comes up as 10.77.0.2/24, pings the host,
# sends husk.size bytes to it over TCP and receives as many; then the virtiofsd share is
# mounted, the host's file read, one written back and husk.files small files created.
# With husk.mode=rebind it instead reads the share, unbinds and rebinds the virtiofs
# driver (a device reset, then a second activation) and reads again. Results go to the
# console (times from /proc/uptime); then it powers off.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
arg() { sed -n "s/.*husk.$1=\([0-9a-z]*\).*/\1/p" /proc/cmdline; }
ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
size=$(arg size) files=$(arg files) fsmib=$(arg fsmib)
mkdir -p /mnt
if [ "$(arg mode)" = rebind ]; then
    mount -t virtiofs hostshare /mnt || { echo MOUNT-FAILED; poweroff -f; }
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
# --- virtio-net
ip link set lo up
ip link set eth0 up
ip addr add 10.77.0.2/24 dev eth0
echo "NET-MAC $(cat /sys/class/net/eth0/address)"
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$d/device")" = 0x0001 ] && echo "NET-FEATURES $(cat "$d/features")"
done
if ping -c 5 -W 5 10.77.0.1 > /tmp/ping 2>&1; then echo "PING ok"; else echo "PING failed"; cat /tmp/ping; fi
head -c "$size" /dev/urandom > /tmp/g2h
echo "G2H-SENT $(sha256sum < /tmp/g2h | cut -d' ' -f1)"
t0=$(ms)
socat -u FILE:/tmp/g2h TCP:10.77.0.1:7001,retry=20,interval=0.5
echo "G2H-MS $(( $(ms) - t0 ))"
rm /tmp/g2h
( socat -u TCP-LISTEN:7002,reuseaddr - | sha256sum | cut -d' ' -f1 > /tmp/h2g.sum ) &
sleep 0.5
echo H2G-READY
wait
echo "H2G-GOT $(cat /tmp/h2g.sum)"
# --- virtio-fs
mount -t virtiofs hostshare /mnt || { echo MOUNT-FAILED; poweroff -f; }
echo MOUNTED
t0=$(ms)
echo "READ-SHA $(sha256sum /mnt/host.bin | cut -d' ' -f1)"
echo "READ-MS $(( $(ms) - t0 ))"
head -c $((fsmib << 20)) /dev/urandom > /tmp/guest.bin
echo "WRITE-SHA $(sha256sum /tmp/guest.bin | cut -d' ' -f1)"
t0=$(ms)
cp /tmp/guest.bin /mnt/guest.bin && sync
echo "WRITE-MS $(( $(ms) - t0 ))"
rm /tmp/guest.bin
mkdir /mnt/many
t0=$(ms)
i=0
while [ "$i" -lt "$files" ]; do
    echo "$i" > "/mnt/many/f$i"
    i=$((i + 1))
done
sync
echo "FILES-MS $(( $(ms) - t0 ))"
echo "GUEST-COUNT $(ls /mnt/many | wc -l)"
umount /mnt
echo "FS-DONE"
poweroff -f
