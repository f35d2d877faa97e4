#!/bin/sh
# /init of the net test guest (vmm/tests/net.rs): brings up eth0 (virtio-net) as
# 10.77.0.2/24, pings the host (10.77.0.1 on the tap), sends SIZE bytes to the host over
# TCP, receives SIZE bytes from it, reports on the console and powers off.
# SIZE comes from the kernel command line (husk.size=BYTES).
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || echo "insmod $m failed"; done
size=$(sed -n 's/.*husk.size=\([0-9]*\).*/\1/p' /proc/cmdline)
up() { cut -d' ' -f1 /proc/uptime; }
ip link set lo up
ip link set eth0 up
ip addr add 10.77.0.2/24 dev eth0
echo "NET-MAC $(cat /sys/class/net/eth0/address)"
echo "NET-MTU $(cat /sys/class/net/eth0/mtu)"
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$d/device")" = 0x0001 ] && echo "NET-FEATURES $(cat "$d/features")"
done
if ping -c 10 -W 5 10.77.0.1 > /tmp/ping 2>&1; then echo "PING ok"; else echo "PING failed"; cat /tmp/ping; fi
echo "PING-RTT $(tail -1 /tmp/ping)"
# Guest -> host: the host listens on 7001 and prints the sha256 of what it got.
head -c "$size" /dev/urandom > /tmp/g2h
echo "G2H-SENT $(sha256sum < /tmp/g2h | cut -d' ' -f1)"
rm -f /tmp/g2h.sum
t0=$(up)
socat -u FILE:/tmp/g2h TCP:10.77.0.1:7001,retry=20,interval=0.5
t1=$(up)
echo "G2H-SECONDS $t0 $t1"
rm /tmp/g2h
# Host -> guest: one connection on 7002.
( socat -u TCP-LISTEN:7002,reuseaddr - | sha256sum | cut -d' ' -f1 > /tmp/h2g.sum ) &
sleep 0.5
echo H2G-READY
wait
echo "H2G-GOT $(cat /tmp/h2g.sum)"
echo "RX-DROPPED $(cat /sys/class/net/eth0/statistics/rx_dropped) RX-ERRORS $(cat /sys/class/net/eth0/statistics/rx_errors)"
poweroff -f
