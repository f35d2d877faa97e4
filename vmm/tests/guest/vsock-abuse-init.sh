#!/bin/sh
# /init of the vsock abuse guest (vmm/tests/vsock_abuse.rs): serves an echo on vsock
# port 5000 for the host's probes, waits for the host's go (a connection to port 5001),
# then floods host port 7000 (full backlog) with REQUESTs while holding 2000 connections
# to host port 7001 (which the host closes). Results go to the console.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
socat VSOCK-LISTEN:5000,fork,reuseaddr EXEC:cat &
sleep 0.5
echo ABUSE-READY
socat -u VSOCK-LISTEN:5001 - > /dev/null
vsock-abuse flood 7000 20 > /tmp/flood.out 2>&1 &
flood=$!
vsock-abuse hold 7001 2000 > /tmp/hold.out 2>&1 &
for _ in $(seq 3000); do grep -q HOLD /tmp/hold.out && break; sleep 0.1; done
cat /tmp/hold.out
wait "$flood"
cat /tmp/flood.out
echo ABUSE-DONE
# The host ends the VM with SIGTERM.
sleep 100000
