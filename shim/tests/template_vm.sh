#!/bin/bash
# Host side of shim/tests/template_vm.rs, run inside the lab: `husk run --network none`
# builds a VM template on first use, then restores later VMs from it; prints
# `CASE name value` lines and `timing` lines on stderr.
# Usage: template_vm.sh HUSK OCI_LAYOUT CLONES AT_ONCE IMAGE_CACHE
# The layout's tags c1..c(CLONES+AT_ONCE) are images of their own (each with
# /clone-image saying image-N): every clone runs a container from its own image.
# IMAGE_CACHE holds their erofs cache entries, converted on the host (converting in
# the emulated L1 takes 5-9 s an image); they are copied into the state folder here.
set -u
real_husk=$1 img=$2 clones=$3 at_once=$4 image_cache=$5
husk() { timeout -s KILL 300 "$real_husk" "$@"; }
# Each case also notes on stderr the seconds since the script began (where CI time goes).
case_() { printf 'CASE %s %s\n' "$1" "$2"; printf 'case %s at %d s\n' "$1" "$SECONDS" >&2; }
leftovers() {
    echo "vmm=$(( $(pgrep -x husk-vmm | wc -l) + $(pgrep -x husk-jail | wc -l) ))" \
         "dirs=$(ls -A /run/husk 2>/dev/null | wc -l)" \
         "builds=$(ls -A /var/lib/husk/templates 2>/dev/null | grep -c '^\.build')" \
         "mounts=$(grep -c -e /run/husk -e /var/lib/husk /proc/self/mountinfo)" \
         "taps=$(ip -o link show type tun 2>/dev/null | wc -l)"
}
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
probe='echo "$(hostname) $(date +%s) $(cat /proc/sys/kernel/random/uuid) $(head -c16 /dev/urandom | od -An -tx1 | tr -d " \n")"'
husk template rm --all >/dev/null 2>&1
mkdir -p /var/lib/husk/images
cp -p "$image_cache"/*.erofs "$image_cache"/*.json /var/lib/husk/images/
# Network namespaces before (a template build's own, made for its taps, must go with
# its VM).
netns_before=$(lsns -n -t net 2>/dev/null | wc -l)

# The template built ahead (`husk template build`, the runs' default shape); a second
# build finds it.
id=$(husk template build 2>/tmp/tb.err); st=$?
case_ build "${st}_${#id}_$(husk template build 2>&1 >/dev/null | grep -c 'exists already')_$(husk template ls | tail -n +2 | wc -l)"
# How long the build took (its VM's boot, then snapshot and stop), for the record.
for k in /var/lib/husk/templates/*/key.json; do
    echo "template build: $(tr -d ' \n' <"$k" | grep -o '"boot_ms":[0-9]*\|"built_ms":[0-9]*\|"save_ms":[0-9]*\|"pause_ms":[0-9]*' | tr '\n' ' ')" >&2
done
case_ build_bad "$(husk template build --storage nfs 2>&1 >/dev/null | grep -c 'want disk or tmpfs')_$(husk template build -m 1k 2>/dev/null; echo $?)"
# First run: restores from it (--timings says so; the build, earlier, not repeated).
t0=$(now)
out=$(husk run --timings --network none "oci:$img" sh -c 'echo first; exit 7' 2>/tmp/first.err); st=$?
t1=$(now)
echo "timing first (restore): $(secs "$t0" "$t1") s" >&2
case_ first "${st}_${out}"
case_ first_built "$(grep -c 'VM restored from a template' /tmp/first.err)"
case_ templates "$(husk template ls | tail -n +2 | wc -l)"
case_ after_first "$(leftovers)"

touch /tmp/seeded
# Clones one after another, each from its own image: each its own hostname, clock,
# random values; exit codes.
for i in $(seq 1 "$clones"); do
    t0=$(now)
    out=$(husk run --timings --network none --hostname "clone$i" "oci:$img:c$i" sh -c "$probe; cat /clone-image; exit $((i % 100))" 2>/tmp/clone.err); st=$?
    t1=$(now)
    echo "timing template: $(secs "$t0" "$t1") s" >&2
    grep -h 'VM restored' /tmp/clone.err | sed 's/^/phases template: /' >&2
    case_ "clone$i" "${st}_$(grep -c 'VM restored from a template' /tmp/clone.err)_$(echo $out)"
    case_ "clone${i}_host_time" "$(date +%s)"
    case_ "clone${i}_start_time" "${t0%.*}"
done
# The clones used the entries converted on the host (none converted again; the first
# run, before them, converted the layout's latest).
case_ seeded "$(ls "$image_cache"/*.erofs | wc -l)_$(find /var/lib/husk/images -newer /tmp/seeded -type f | wc -l)"
# stdin and stdout through a restored VM.
out=$(echo through-stdin | husk run -i --network none "oci:$img" sh -c 'cat; echo err >&2' 2>/tmp/io.err)
case_ stdin "$?_${out}_$(grep -c '^err$' /tmp/io.err)"
# Several at once, each from its own image (each one's host time taken as it starts
# and as it ends).
pids=""
for j in $(seq 1 "$at_once"); do
    k=$((clones + j))
    (
        date +%s >/tmp/par_$j.start
        husk run --timings --network none --hostname "par$j" "oci:$img:c$k" sh -c "$probe; cat /clone-image; exit $j" >/tmp/par_$j 2>/tmp/par_$j.err
        echo $? >/tmp/par_$j.rc
        date +%s >/tmp/par_$j.time
    ) &
    pids="$pids $!"
done
wait $pids
for j in $(seq 1 "$at_once"); do
    case_ "par$j" "$(cat /tmp/par_$j.rc)_$(grep -c 'VM restored from a template' /tmp/par_$j.err)_$(echo $(cat /tmp/par_$j))"
    case_ "par${j}_host_time" "$(cat /tmp/par_$j.time)"
    case_ "par${j}_start_time" "$(cat /tmp/par_$j.start)"
done
case_ after_clones "$(leftovers)"

# A boot, for comparison (make bench has the full one, interleaved).
t0=$(now)
out=$(husk run --timings --network none --no-template "oci:$img" sh -c 'echo booted' 2>/tmp/boot.err)
t1=$(now)
echo "timing boot: $(secs "$t0" "$t1") s" >&2
grep -h 'VM booted' /tmp/boot.err | sed 's/^/phases boot: /' >&2
case_ no_template "$?_${out}_$(grep -c 'VM booted' /tmp/boot.err)"

# A damaged template: the run boots instead (a warning), the template is discarded,
# and the next run builds a new one.
t=$(ls -d /var/lib/husk/templates/*/ | head -1)
printf '\xff' | dd of="$t/state" bs=1 seek=100 conv=notrunc 2>/dev/null
out=$(husk run --timings --network none "oci:$img" sh -c 'echo survived' 2>/tmp/bad.err); st=$?
case_ damaged "${st}_${out}_$(grep -c 'did not restore from its template' /tmp/bad.err)_$(grep -c 'VM booted' /tmp/bad.err)_$(husk template ls | tail -n +2 | wc -l)"
out=$(husk run --timings --network none "oci:$img" sh -c 'echo rebuilt' 2>/tmp/re.err); st=$?
case_ rebuilt "${st}_${out}_$(grep -c 'VM restored from a template' /tmp/re.err)_$(husk template ls | tail -n +2 | wc -l)"
# Runs on the default network (one NIC) restore a template of their shape, built by
# the first; each guest NIC takes the clone's own MAC (not the template's
# 02:68:75:73:6b:00) and the network works: the second fetches a file from an HTTP
# server on the bridge's L1 side (10.88.0.1; the bridge exists after the first run).
tmac=02:68:75:73:6b:00
t0=$(now)
mac1=$(husk run --timings "oci:$img" cat /sys/class/net/eth0/address 2>/tmp/net.err); st=$?
echo "timing networked first (template build + restore): $(secs "$t0" "$(now)") s" >&2
case_ networked "${st}_$(grep -c 'VM restored from a template' /tmp/net.err)_$([ -n "$mac1" ] && [ "$mac1" != $tmac ] && echo own-mac)"
mkdir -p /tmp/tpl-www && echo hello-l1 >/tmp/tpl-www/f
busybox httpd -f -p 10.88.0.1:8000 -h /tmp/tpl-www &
hp=$!
t0=$(now)
out=$(husk run --timings "oci:$img" sh -c 'cat /sys/class/net/eth0/address; timeout 10 wget -q -O- http://10.88.0.1:8000/f' 2>/tmp/net2.err); st=$?
echo "timing networked template: $(secs "$t0" "$(now)") s" >&2
grep -h 'VM restored' /tmp/net2.err | sed 's/^/phases networked template: /' >&2
kill $hp
mac2=$(echo "$out" | head -1)
case_ networked2 "${st}_$(grep -c 'VM restored from a template' /tmp/net2.err)_$(echo "$out" | tail -1)_$([ "$mac2" != "$mac1" ] && [ "$mac2" != $tmac ] && echo own-mac)"
case_ templates_net "$(husk template ls | tail -n +2 | wc -l)"
# Volumes (the virtio-fs share): the first run with -v builds the share shape's
# template (a throwaway virtiofsd; nothing mounted), later runs restore it with their
# own virtiofsd (memory copied into shared memory that virtiofsd maps). Each container
# reads and writes the host folder, and has its own UUID.
mkdir -p /tmp/tpl-vol && echo from-host >/tmp/tpl-vol/in
for n in 1 2 3; do
    t0=$(now)
    out=$(husk run --timings --network none -v /tmp/tpl-vol:/data "oci:$img" sh -c "cat /data/in; echo vol$n >/data/out$n; cat /proc/sys/kernel/random/uuid" 2>/tmp/vol.err); st=$?
    echo "timing volume $n: $(secs "$t0" "$(now)") s" >&2
    grep -h 'VM restored' /tmp/vol.err | sed "s/^/phases volume $n: /" >&2
    [ "$st" = 0 ] || sed "s/^/volume $n: /" /tmp/vol.err >&2
    echo "$out" | tail -1 >>/tmp/vol.uuids
    case_ "volume$n" "${st}_$(grep -c 'VM restored from a template' /tmp/vol.err)_$(echo "$out" | head -1)_$(cat /tmp/tpl-vol/out$n 2>/dev/null)"
done
case_ volume_uuids "$(sort -u /tmp/vol.uuids | grep -c .)"
case_ templates_vol "$(husk template ls | tail -n +2 | wc -l)"
case_ rm "$(husk template rm --all | wc -l)_$(husk template ls | tail -n +2 | wc -l)"
# A full disk under the templates folder (a 16 MiB tmpfs): the build fails saving the
# memory, says so, and the run boots; no build folder is left.
mkdir -p /var/lib/husk/templates
mount -t tmpfs -o size=16m husk-full /var/lib/husk/templates
out=$(husk run --timings --network none "oci:$img" echo booted-anyway 2>/tmp/tf.err); st=$?
case_ template_full_disk "${st}_${out}_$(grep -c 'no VM template.*No space left on device' /tmp/tf.err)_$(grep -c 'VM booted' /tmp/tf.err)_$(ls -A /var/lib/husk/templates | wc -l)"
umount /var/lib/husk/templates
case_ after_all "$(leftovers)"
case_ netns "$(( $(lsns -n -t net 2>/dev/null | wc -l) - netns_before ))_${netns_before}"
