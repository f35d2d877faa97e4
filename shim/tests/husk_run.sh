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
case_() { printf 'CASE %s %s\n' "$1" "$2"; }
leftovers() {
    local procs dirs
    procs=$(pgrep -x husk-vmm | wc -l)
    dirs=$(ls -A /run/husk 2>/dev/null | wc -l)
    tmp=$(ls -A /var/lib/husk/tmp 2>/dev/null | wc -l)
    mounts=$(grep -c -e /run/husk -e /var/lib/husk /proc/mounts)
    loops=$(losetup -a 2>/dev/null | wc -l)
    echo "procs=$procs dirs=$dirs tmp=$tmp mounts=$mounts loops=$loops"
}

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
case_ after_foreground "$(leftovers)"

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
"$husk" rm web 2>/tmp/rmerr; case_ rm_running "$?"
# PID 1 of the container ignores TERM without a handler (as under docker): KILL.
"$husk" kill web TERM; sleep 1
case_ ps_after_term "$("$husk" ps | awk '$1=="web" {print $2}')"
"$husk" kill web; sleep 3
case_ ps_exited "$("$husk" ps | awk '$1=="web" {print $2 $3}')"
case_ logs "$("$husk" logs web)"
"$husk" rm web; case_ rm "$?"
case_ after_detached "$(leftovers)"

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
case_ after_bad "$(leftovers)"
echo "--- errors"; cat /tmp/err
