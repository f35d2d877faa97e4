#!/bin/sh
# /init of the snapshot test guest (vmm/tests/snapshot.rs): serves vsock port 1234;
# each connection gets one line of the guest's state: a counter kept in guest memory
# (it goes up by one per connection), the guest's clock, a fresh random UUID, 16 bytes
# of /dev/urandom, the first bytes and size of the disk (each clone has its own),
# whether the kernel's vmgenid driver is bound to husk-vmm's VM generation ID (an ACPI
# driver in 6.1, a platform driver from 6.10), whether the CRNG is initialised, and how
# often the kernel reseeded its CRNG for a virtual machine fork (a new generation ID).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
echo 0 > /tmp/count
cat > /bin/answer <<'EOS'
#!/bin/sh
n=$(( $(cat /tmp/count) + 1 ))
echo $n > /tmp/count
echo 1 > /proc/sys/vm/drop_caches
echo "count=$n time=$(date +%s) uuid=$(cat /proc/sys/kernel/random/uuid) urandom=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n') disk=$(head -c8 /dev/vda) sectors=$(cat /sys/block/vda/size) vmgenid=$(ls /sys/bus/*/drivers/vmgenid 2>/dev/null | grep -c HUSKVGID) crnginit=$(dmesg | grep -c 'crng init done') forks=$(dmesg | grep -c 'crng reseeded due to virtual machine fork')"
EOS
chmod +x /bin/answer
socat VSOCK-LISTEN:1234,fork,reuseaddr EXEC:/bin/answer &
sleep 0.3
echo SNAP-GUEST-READY
wait
poweroff -f
