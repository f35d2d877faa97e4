#!/bin/sh
# /init of the device test guest (vmm/tests/boot.rs): exercises every husk-vmm device
# and reports on the console, then powers off. The vsock transfer size comes from the
# kernel command line (husk.size=BYTES).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
echo "HUSK-MARKER cpus=$(grep -c ^processor /proc/cpuinfo)"
echo "BLK-SHA $(sha256sum /dev/vda | cut -d' ' -f1)"
echo "RNG $(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
size=$(sed -n 's/.*husk.size=\([0-9]*\).*/\1/p' /proc/cmdline)
# Guest -> host: to an echo server on the host's <uds>_6000.
head -c "$size" /dev/urandom > /tmp/g2h
echo "G2H-SENT $(sha256sum < /tmp/g2h | cut -d' ' -f1)"
socat -t 60 - VSOCK-CONNECT:2:6000 < /tmp/g2h > /tmp/g2h.back
echo "G2H-BACK $(sha256sum < /tmp/g2h.back | cut -d' ' -f1)"
# Host -> guest: an echo server on guest port 5000, one connection.
socat -t 60 VSOCK-LISTEN:5000 EXEC:cat &
sleep 0.5
echo H2G-READY
wait
echo H2G-DONE
poweroff -f
