#!/bin/bash
# Host side of shim/tests/husk_run.rs, run inside the lab: drives the husk CLI and
# prints `CASE name value` lines the Rust test checks.
# Usage: husk_run.sh HUSK OCI_LAYOUT OCI_ARCHIVE ROOTFS_DIR REGISTRY_CONFIG REGISTRY_REF
# (REGISTRY_REF was pulled and converted on the host into REGISTRY_CONFIG's state_dir:
# the lab cannot reach the host's registry, so it runs it from the cache.)
set -u
real_husk=$1 img=$2 archive=$3 rootfs=$4 regcfg=$5 regref=$6
# Every call bounded: a hang fails its case (exit 137) and the rest still runs; the
# sandbox folders' logs are printed on stderr for the diagnosis.
diag() {
    { echo "--- $*"; ps -eo pid,ppid,stat,etime,wchan:20,args | grep -E "husk|sh -c" | grep -v grep
      for d in /run/husk/*/vm; do [ -d "$d" ] && { echo "== $d"; tail -5 "$d/console.log"; tail -3 "$d/vmm.log"; }; done; } >&2
}
husk() {
    timeout -s KILL 300 "$real_husk" "$@"
    local rc=$?
    [ $rc = 137 ] && diag "husk $* was killed after 300 s"
    return $rc
}
husk=husk
export HUSK_RUN_QUIET=1
# Each case also notes on stderr the seconds since the script began (where CI time goes).
case_() { printf 'CASE %s %s\n' "$1" "$2"; printf 'case %s at %d s\n' "$1" "$SECONDS" >&2; }
leftovers() {
    local procs dirs
    procs=$(pgrep -x 'husk-vmm|virtiofsd' | wc -l)
    dirs=$(ls -A /run/husk 2>/dev/null | wc -l)
    tmp=$(ls -A /var/lib/husk/tmp 2>/dev/null | wc -l)
    mounts=$(grep -c -e /run/husk -e /var/lib/husk /proc/mounts)
    loops=$(losetup -a 2>/dev/null | wc -l)
    scratch=$(ls -A /var/lib/husk/scratch 2>/dev/null | wc -l)
    # The default network's (docs/network.md): veths of the VMs' namespaces, IPAM leases.
    veth=$(ip -o link show type veth 2>/dev/null | wc -l)
    leases=$(ls /var/lib/cni/networks/husk 2>/dev/null | grep -c '^[0-9]')
    echo "procs=$procs dirs=$dirs tmp=$tmp mounts=$mounts loops=$loops scratch=$scratch veth=$veth leases=$leases"
}
# MiB the storage case writes into a 256 MiB VM (HUSK_STORAGE_TEST_MIB; CI: 300, the
# lab's emulated disk I/O is slow).
storage_mib=${HUSK_STORAGE_TEST_MIB:-300}
# Three runs of a VM shape used once here boot (--no-template): the first run of a shape
# builds its template, which in the emulated lab costs more than the one boot it would
# save. -m 256m differs from the default shape in memory only; template_vm.rs restores
# --network none and volume shapes. The --storage tmpfs run still builds and restores
# its template: the one lab run of a template without a scratch disk.

out=$("$husk" run -q "oci:$img" sh -c 'exit 3'); case_ exit3 "$?"
out=$("$husk" run -q -e GREETING=hi -w /tmp/made/by/husk "oci:$img" sh -c 'echo $GREETING $(pwd)'); case_ envwd "$(echo $out | tr ' ' _)"
printf '# env file\nFROM_FILE=file value\nBOTH=file\n' >/tmp/envfile
out=$("$husk" run -q --env-file /tmp/envfile -e BOTH=flag --entrypoint /bin/sh "oci:$img" -c 'echo "$FROM_FILE/$BOTH"')
case_ envfile_entrypoint "$(echo $out | tr ' ' _)"
out=$("$husk" run -q -u alice "oci:$img" id -u); case_ user "$out"
out=$("$husk" run -q -u 1234:55 "oci:$img" id); case_ usernum "$(echo $out | tr ' ' _)"
out=$(echo piped | "$husk" run -q -i "oci:$img" cat); case_ stdin "$out"
# From a registry image (no extra boot: this case runs anyway).
"$husk" --config "$regcfg" run -q --pull never "$regref" sh -c 'echo out; echo err >&2' >/tmp/o 2>/tmp/e
case_ split "$(cat /tmp/o)/$(cat /tmp/e)"
out=$("$husk" run -q "oci:$img" sh -c 'seq 100000 | md5sum'); case_ workload "$(echo $out | cut -d' ' -f1)"
case_ workload_host "$(seq 100000 | md5sum | cut -d' ' -f1)"
out=$("$husk" run -q "oci-archive:$archive" echo from-archive); case_ archive "$out"
out=$(echo 'echo default-cmd' | "$husk" run -q -i "oci:$img"); case_ default_cmd "$out"
out=$("$husk" run -q --rootfs "$rootfs" sh -c 'echo from-rootfs; ls /home'); case_ rootfs "$(echo $out | tr ' ' _)"
# --foreground: timeout keeps husk in the terminal's foreground process group (else
# husk's raw mode stops it with SIGTTOU when script's shell does not exec the command).
out=$(SHELL=/bin/sh script -qec "timeout --foreground -s KILL 300 $real_husk run -q -t oci:$img sh -c 'tty; test -t 0 && test -t 1 && echo both-terminals; echo \$TERM'" /dev/null </dev/null | tr -d '\r' | tr '\n' ' ')
[ "${out%Killed*}" != "$out" ] && diag "husk run -t was killed after 300 s"
case_ tty "$(echo $out | tr ' ' _)"
# Ctrl-C reaches the container (its handler decides the exit status).
"$real_husk" run -q "oci:$img" sh -c 'trap "exit 42" INT; echo armed; sleep 300 & wait' >/tmp/sig &
hpid=$!
for _ in $(seq 600); do grep -q armed /tmp/sig 2>/dev/null && break; sleep 0.1; done
kill -INT "$hpid"; wait "$hpid"; case_ sigint "$?"

# Storage (the default: a sparse ext4 scratch disk as the overlay's upper layer), lo up,
# and inode numbers: readdir's d_ino equal to stat's st_ino (the rootfs has dino, see
# shim/tests/dino.c) for lower files, copied-up and new ones, and folders. More
# written than the 256 MiB VM has (the image is under /var/lib/husk/scratch).
storage_script=$(cat <<'EOF'
echo up >/upper.txt; mkdir /newdir; echo new >/newdir/f; echo x >>/etc/group
s=$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/big bs=1M count=$STORAGE_MIB conv=fsync 2>/dev/null && ok=dd-ok || ok=dd-failed
e=$(cut -d' ' -f1 /proc/uptime)
echo "lo=$(cat /sys/class/net/lo/flags) $ok"
echo "dd_seconds $s $e" >&2; df -k / >&2
echo "df_kib=$(df -k / | awk 'NR==2 {print $2}')"
dino / etc upper.txt newdir bin | tr '\n' ' '; dino /etc passwd group | tr '\n' ' '; dino /newdir f
EOF
)
# Bounded at 600 s, not 300: the write is slow in the nested lab (512 MiB took 355 s
# with the host loaded).
timeout -s KILL $((600 + storage_mib)) "$real_husk" run -q --no-template -m 256m -e STORAGE_MIB="$storage_mib" --rootfs "$rootfs" sh -c "$storage_script" >/tmp/st_disk 2>/tmp/st_disk_err
case_ storage_disk_rc "$?"
cat /tmp/st_disk_err >&2
case_ lo_up "$(grep -o 'lo=[^ ]*' /tmp/st_disk)"
case_ dd_disk "$(grep -o 'dd-[a-z]*' /tmp/st_disk)"
# 10 GiB less ext4's own: more than 9 GiB.
case_ df_disk "$(awk -F= '/df_kib/ {print ($2 > 9437184) ? "disk" : "small:" $2}' /tmp/st_disk)"
case_ ino_disk "$(grep -o '[a-z.]*:[a-z]*' /tmp/st_disk | tr '\n' ,)"
awk -v mib="$storage_mib" '/dd_seconds/ {printf "storage: %d MiB dd+fsync in the guest took %.1f s\n", mib, $3 - $2}' /tmp/st_disk_err >&2
# --storage tmpfs: today's tmpfs upper (half the guest's RAM), lo and inodes too.
tmpfs_cmd='echo t >/t; echo "lo=$(cat /sys/class/net/lo/flags) df_kib=$(df -k / | awk "NR==2 {print \$2}") $(dino / t etc bin | tr "\n" " ")"'
"$husk" run -q --storage tmpfs --rootfs "$rootfs" sh -c "$tmpfs_cmd" >/tmp/st_tmpfs 2>>/tmp/err
case_ storage_tmpfs "$(awk '{split($2, a, "="); print $1, (a[2] < 1048576) ? "ram" : "big:" a[2], $3, $4, $5}' /tmp/st_tmpfs | tr ' ' _)"
# A full disk under the scratch disks (a 48 MiB tmpfs on /var/lib/husk/scratch): the
# container's write fails inside it (the VM's disk answers I/O errors), the container
# goes on and its status is husk's, husk names the host's reason, and the scratch image
# goes.
mkdir -p /var/lib/husk/scratch
mount -t tmpfs -o size=48m husk-full /var/lib/husk/scratch
"$husk" run -q --no-template --network none "oci:$img" sh -c 'dd if=/dev/zero of=/big bs=1M count=96 conv=fsync 2>/dev/null && echo dd-ok || echo dd-failed; echo alive; exit 3' >/tmp/full 2>/tmp/full_err
rc=$?
cat /tmp/full_err >&2
case_ full_disk "${rc}_$(tr '\n' _ </tmp/full)$(grep -c 'could not be written on the host (/var/lib/husk/scratch/.*No space left on device' /tmp/full_err)_$(ls -A /var/lib/husk/scratch | wc -l)"
umount /var/lib/husk/scratch
case_ after_foreground "$(leftovers)"

# Volumes (one virtiofsd per VM): a rw folder (what the container writes there is on
# the host when the run ends), the same folder :ro (writes refused), a single file, a
# tmpfs, a read-only root; a host path that does not exist: 125 naming it.
mkdir -p /tmp/vol && echo host-file >/tmp/vol/in.txt && echo single >/tmp/single.txt && rm -f /tmp/vol/out.txt
vol_script='cat /data/in.txt; echo from-guest >/data/out.txt; (echo x >/ro/no) 2>/dev/null && echo ro-writable || echo ro-refused; cat /etc/single.txt; echo t >/scratch/t && echo tmpfs-ok; (touch /rootfile) 2>/dev/null && echo root-writable || echo root-ro'
out=$("$husk" run -q --no-template -v /tmp/vol:/data -v /tmp/vol:/ro:ro -v /tmp/single.txt:/etc/single.txt:ro --tmpfs /scratch:size=8m --read-only "oci:$img" sh -c "$vol_script" 2>>/tmp/err)
case_ volumes "$(echo $out | tr ' ' _)"
case_ volume_on_host "$(cat /tmp/vol/out.txt 2>&1)"
case_ virtiofsd_left "$(pgrep -x virtiofsd | wc -l)"
"$husk" run -q -v /no/such/dir:/data "oci:$img" true 2>/tmp/volerr; case_ bad_volume "$?"
case_ bad_volume_msg "$(grep -c /no/such/dir /tmp/volerr)"
case_ after_volumes "$(leftovers)"

# A background process holding stdout open: husk returns once the command exits (its
# output drained for a bounded time), with its status.
s0=$(date +%s); out=$("$husk" run -q "oci:$img" sh -c 'sleep 600 & echo bg; exit 4'); rc=$?; s1=$(date +%s)
case_ stdout_held "${out}_${rc}_$([ $((s1 - s0)) -lt 200 ] && echo bounded || echo slow)"
# On a terminal, a container without -t cannot drive it: control sequences stripped.
out=$(SHELL=/bin/sh script -qec "timeout -s KILL 300 $real_husk run -q oci:$img printf 'a\\033[31mb\\033]0;title\\007c\\n'" /dev/null </dev/null | tr -d '\r' | od -An -c | tr -d ' \n')
case_ sanitized "$out"

# Four VMs at once (bounded: a hang is reported with what was running), all needing the
# same image converted: one converts, the others wait for it.
rm -rf /var/lib/husk/images
pids=()
for i in 1 2 3 4; do "$husk" run -q "oci:$img" sh -c "echo vm$i" >/tmp/par$i 2>/tmp/parerr$i & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || echo "parallel run exited $?" >&2; done
if [ "$(cat /tmp/par1 /tmp/par2 /tmp/par3 /tmp/par4 | wc -l)" != 4 ]; then
    { echo "--- parallel: stderr"; cat /tmp/parerr*; } >&2; diag "parallel runs"
fi
case_ parallel "$(cat /tmp/par1 /tmp/par2 /tmp/par3 /tmp/par4 | sort | tr '\n' ,)"
case_ cache "$(ls /var/lib/husk/images | sed 's/^[0-9a-f]*//' | sort | tr '\n' ,)"
case_ after_parallel "$(leftovers)"

# Detached: ps, exec, logs, kill, rm.
name=$("$husk" run -d -q --name web "oci:$img" sh -c 'echo started; exec sleep 600'); case_ detach_name "$name"
case_ ps_running "$("$husk" ps | awk '$1=="web" {print $2}')"
case_ exec "$("$husk" exec web sh -c 'cat /proc/1/cmdline | tr "\0" " "')"
# Its scratch disk: under the state folder, 10 GiB, sparse (a few MiB used).
sc=/var/lib/husk/scratch/web.img
case_ scratch_file "$(stat -c %s $sc)_$(du -k $sc | awk '{print ($1 < 262144) ? "sparse" : "full:" $1}')"
"$husk" rm web 2>/tmp/rmerr; case_ rm_running "$?"
# PID 1 of the container ignores TERM without a handler (as under docker): KILL.
"$husk" kill web TERM; sleep 1
case_ ps_after_term "$("$husk" ps | awk '$1=="web" {print $2}')"
"$husk" kill web; sleep 3
case_ ps_exited "$("$husk" ps | awk '$1=="web" {print $2 $3}')"
case_ logs "$("$husk" logs web)"
"$husk" rm web; case_ rm "$?"
case_ after_detached "$(leftovers)"

# Memory goes back: a container allocates, touches and frees 300 MiB (busybox dd's
# buffer); the guest's free page reporting returns it, so husk-vmm's RSS falls well
# under its peak (VmHWM).
"$husk" run -d -q --name mem "oci:$img" sh -c 'dd if=/dev/zero of=/dev/null bs=300M count=1 2>/dev/null; echo freed; exec sleep 600' >/dev/null
for _ in $(seq 300); do "$husk" logs mem 2>/dev/null | grep -q freed && break; sleep 1; done
# The recorded pid is the jail's keeper (husk-jail) when jailed: husk-vmm is its child.
kpid=$(head -1 /run/husk/mem/vm/pid | cut -d' ' -f1)
vpid=$(pgrep -x husk-vmm -P "$kpid" || echo "$kpid")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$vpid/status")
for _ in $(seq 60); do
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$vpid/status")
    [ $((hwm - rss)) -gt 204800 ] && break; sleep 1
done
echo "memory: husk-vmm peak $((hwm / 1024)) MiB, after the guest freed 300 MiB $((rss / 1024)) MiB" >&2
case_ memory_back "$([ $((hwm - rss)) -gt 204800 ] && echo back || echo "kept:hwm=${hwm}k,rss=${rss}k")"
"$husk" rm -f mem
case_ after_memory "$(leftovers)"

# kill -9 of husk while the VM runs: the VM goes with it, the next call cleans up.
"$real_husk" run -q --name victim "oci:$img" sleep 600 &
hpid=$!
for _ in $(seq 600); do [ -S /run/husk/victim/vm/vsock.sock ] && break; sleep 0.1; done
sleep 2
kill -9 "$hpid"; wait "$hpid" 2>/dev/null
sleep 1
"$husk" ps >/dev/null
case_ after_kill9 "$(leftovers)"

# Bad input: 125 and nothing left.
"$husk" run -q --pull never busybox:latest true 2>/tmp/err; case_ bad_ref "$?"
"$husk" run -q oci:/nonexistent true 2>>/tmp/err; case_ bad_image "$?"
"$husk" run -q --rootfs "$rootfs" 2>>/tmp/err; case_ no_cmd "$?"
echo garbage >/tmp/corrupt.tar; "$husk" run -q oci-archive:/tmp/corrupt.tar true 2>>/tmp/err; case_ bad_archive "$?"
"$husk" run -q "oci:$img" /no/such/cmd 2>>/tmp/err; case_ bad_cmd "$?"
"$husk" run -q --memory 0 "oci:$img" true 2>>/tmp/err; case_ bad_memory "$?"
"$husk" run -q --name 'bad/name' "oci:$img" true 2>>/tmp/err; case_ bad_name "$?"
"$husk" run -q "oci:$img:nosuchtag" true 2>>/tmp/err; case_ bad_tag "$?"
"$husk" run -q --storage-size 1k "oci:$img" true 2>>/tmp/err; case_ bad_storage_size "$?"
"$husk" run -q --storage nfs "oci:$img" true 2>>/tmp/err; case_ bad_storage "$?"
case_ after_bad "$(leftovers)"
echo "--- errors"; cat /tmp/err
