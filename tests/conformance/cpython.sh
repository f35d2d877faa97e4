#!/bin/bash
# Fidelity suite, run inside the lab by `make conformance`: CPython's own regression
# test modules in a Debian image, each module once under husk (`husk run`) and once
# under runc (`ctr run`, containerd started here) in the same lab run, on the same
# image. A module's result is what `python3 -m test` says of it (exit 0: passed).
#   cpython.sh HUSK OCI_LAYOUT OCI_ARCHIVE OUT_JSON MODULE[:PATTERN,...]...
# A MODULE:PATTERN,... runs only the matching tests of that module (regrtest's -m,
# e.g. test_os:TestSendfile,test_attributes).
set -uo pipefail
husk=$1 layout=$2 archive=$3 out=$4
shift 4
work=$(mktemp -d)
# containerd's overlayfs snapshots cannot live on the lab's overlay root: a tmpfs.
mount -t tmpfs tmpfs "$work"
containerd --root "$work/root" --state "$work/state" --address "$work/c.sock" >"$work/containerd.log" 2>&1 &
cpid=$!
trap 'kill $cpid 2>/dev/null; wait $cpid 2>/dev/null; umount -l "$work"; rmdir "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/c.sock" ] && break; sleep 0.1; done
ctr=(ctr --address "$work/c.sock")
image=docker.io/library/debian-python:latest
"${ctr[@]}" images import --base-name docker.io/library/debian-python "$archive" >/dev/null \
    || { echo "cpython: ctr images import failed" >&2; cat "$work/containerd.log" >&2; exit 1; }
results=()
mods=()
for spec in "$@"; do
    m=${spec%%:*}
    mods+=("$m")
    sel=()
    if [ "$spec" != "$m" ]; then
        IFS=, read -ra pats <<<"${spec#*:}"
        for p in "${pats[@]}"; do sel+=(-m "$p"); done
    fi
    for rt in runc husk; do
        log="$work/$rt-$m.log"
        t=$(date +%s)
        if [ "$rt" = runc ]; then
            timeout 1200 "${ctr[@]}" run --rm "$image" "c-$m" python3 -m test -v "$m" "${sel[@]}" >"$log" 2>&1
        else
            timeout 1200 "$husk" run --rm -q -m 1g "oci:$layout" python3 -m test -v "$m" "${sel[@]}" >"$log" 2>&1
        fi
        code=$?
        secs=$(( $(date +%s) - t ))
        # The failing and erroring test cases, one per line ("test_x (mod.Class.test_x) ... FAIL").
        bad=$(grep -E '\.\.\. (FAIL|ERROR)$' "$log" | sed 's/ \.\.\. / /' | head -20 | tr '\n' ';')
        summary=$(grep -E '^(Tests result|== Tests result|Result):' "$log" | tail -1)
        echo "cpython: $m under $rt: exit $code in ${secs}s ${summary}" >&2
        [ -n "$bad" ] && echo "  failing: $bad" >&2
        if [ "$code" -ne 0 ] && [ -z "$bad" ]; then tail -15 "$log" | sed 's/^/  | /' >&2; fi
        results+=("{\"module\": \"$m\", \"select\": \"${spec#"$m"}\", \"runtime\": \"$rt\", \"exit\": $code, \"seconds\": $secs, \"failing\": \"${bad//\"/\'}\"}")
    done
done
{
    echo '['
    for i in "${!results[@]}"; do
        [ "$i" -gt 0 ] && echo ','
        echo "${results[$i]}"
    done
    echo ']'
} >"$out"
# The verdict: every module that passes under runc passes under husk.
worse=0
for m in "${mods[@]}"; do
    r=$(grep -cE "\"module\": \"$m\", \"select\": \"[^\"]*\", \"runtime\": \"runc\", \"exit\": 0," "$out")
    h=$(grep -cE "\"module\": \"$m\", \"select\": \"[^\"]*\", \"runtime\": \"husk\", \"exit\": 0," "$out")
    if [ "$r" = 1 ] && [ "$h" != 1 ]; then echo "cpython: $m passes under runc, fails under husk" >&2; worse=$((worse + 1)); fi
done
echo "cpython: $# modules; $worse pass under runc and fail under husk" >&2
[ "$worse" -eq 0 ]
