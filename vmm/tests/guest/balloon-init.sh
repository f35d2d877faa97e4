#!/bin/sh
# /init of the free page reporting guest (vmm/tests/balloon.rs): balloon-fill maps and
# touches husk.fill MiB, holds it, frees it, and says on the console when each step is
# done.
# The host measures husk-vmm's RSS at each step; the guest's free pages must go back.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
free_kib() { awk '/^MemFree:/ {print $2}' /proc/meminfo; }
# Boot-time reports of never-touched memory settle within a few seconds.
sleep 5
echo "BALLOON-READY free_kib=$(free_kib)"
sleep 3
fill=$(sed -n 's/.*husk.fill=\([0-9]*\).*/\1/p' /proc/cmdline)
balloon-fill "$fill" 5 || echo "balloon-fill failed"
echo "BALLOON-AFTER free_kib=$(free_kib)"
# Page reporting runs about 2 s after pages are freed; the host watches RSS meanwhile.
for i in $(seq 30); do sleep 2; echo "BALLOON-FREE-$i free_kib=$(free_kib)"; done
echo BALLOON-DONE
# The host ends the VM with SIGTERM.
sleep 100000
