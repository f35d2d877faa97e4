#!/bin/bash
# Host side of shim/tests/network.rs, run inside the lab: husk run's networks, cases
# printed as `CASE name value` lines the Rust test checks, measurements as
# `MEASURE ...` lines.
# Usage: network.sh HUSK OCI_LAYOUT
# (busybox 1.35 wget -T segfaults: timeout(1) bounds the fetches instead.)
# Everything stays inside the L1 (it has no network device): the bridge husk0, the
# containers' namespaces, an HTTP server on the bridge's address.
set -u
real_husk=$1 img=$2
diag() {
    { echo "--- $*"; ps -eo pid,ppid,stat,etime,args | grep -E "husk|CNI|iptables" | grep -v grep
      for d in /run/husk/*/vm; do [ -d "$d" ] && { echo "== $d"; tail -5 "$d/console.log"; tail -3 "$d/vmm.log"; }; done; } >&2
}
husk() {
    timeout -s KILL 300 "$real_husk" "$@"
    local rc=$?
    [ $rc = 137 ] && diag "husk $* was killed after 300 s"
    return $rc
}
# Our files: the L1's /tmp is the host's (under an overlay), where names may be taken.
w=$(mktemp -d /tmp/husk-network-test.XXXXXX)
# Each case also notes on stderr the seconds since the script began (where CI time goes).
case_() { printf 'CASE %s %s\n' "$1" "$2"; printf 'case %s at %d s\n' "$1" "$SECONDS" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
# What a container may leave behind: husk's namespaces, veths in the L1, iptables rules
# and chains of a container (CNI's per-container chains; comments carry its id), IPAM
# leases, VMs and folders.
leftovers() {
    local netns veth rules leases procs dirs taps
    netns=$(ls /run/husk/.networks 2>/dev/null | grep -c '\.ns$')
    veth=$(ip -o link show type veth 2>/dev/null | wc -l)
    taps=$(ip -o link show type tun 2>/dev/null | wc -l)
    rules=$(iptables-save 2>/dev/null | grep -cE 'id: \\?"|^:CNI-DN-|^:CNI-[0-9a-f]{20,}')
    leases=$(ls /var/lib/cni/networks/husk 2>/dev/null | grep -c '^[0-9]')
    procs=$(pgrep -x husk-vmm | wc -l)
    dirs=$(ls /run/husk 2>/dev/null | wc -l)
    echo "netns=$netns veth=$veth taps=$taps rules=$rules leases=$leases procs=$procs dirs=$dirs"
}

# The L1 loaded the network modules at boot (tests/lab/run's l1_modules).
case_ modules "$(for m in tun veth bridge act_mirred nf_tables xt_MASQUERADE; do [ -d /sys/module/$m ] || echo -n "$m-missing "; done)ok"
case_ before "$(leftovers)"

# A server container (detached): busybox httpd on port 80, published on the L1's 8080.
t=$(now)
husk run -d -q --timings --name srv -p 8080:80 "oci:$img" sh -c 'mkdir -p /www && echo hello-from-srv >/www/index.html && exec httpd -f -p 80 -h /www' >$w/srv.out 2>$w/srv.err
case_ srv_started "$? $(cat $w/srv.out)"
echo "MEASURE srv_start $(took "$t") s" >&2
srv_ip=$(sed -n 's/.*"address": *"\([0-9.]*\)\/.*/\1/p' /run/husk/.networks/srv.json | head -1)
case_ srv_ip "$(echo "$srv_ip" | cut -d. -f1-2)"
# The server's own view: eth0 with that address, the default route via the bridge.
out=$(husk exec srv sh -c 'ip addr show eth0; ip route' 2>&1)
echo "$out" >&2
case_ srv_eth0 "$(echo "$out" | grep -c "inet $srv_ip/16")"
case_ srv_route "$(echo "$out" | grep -o 'default via [0-9.]*' | head -1 | tr ' ' _)"
# The bridge exists now: an HTTP server on the L1's side of it (on 10.88.0.1 only).
mkdir -p $w/www && echo hello-from-l1 >$w/www/file.txt
busybox httpd -f -p 10.88.0.1:8000 -h $w/www &
httpd_pid=$!
sleep 1
for _ in $(seq 50); do busybox wget -q -O /dev/null "http://$srv_ip/" 2>/dev/null && break; sleep 1; done

# -p 8080:80 from the L1: localhost (portmap's DNAT with route_localnet) and the bridge IP.
case_ publish_localhost "$(timeout 30 busybox wget -q -O - http://127.0.0.1:8080/ 2>&1)"
case_ publish_bridge_ip "$(timeout 30 busybox wget -q -O - http://10.88.0.1:8080/ 2>&1)"
case_ l1_to_srv "$(timeout 30 busybox wget -q -O - "http://$srv_ip/" 2>&1)"

# A second container: fetches from the L1's server and from the first container, with
# --dns, -h, --add-host; prints its name files, addresses and routes.
t=$(now)
husk run -q --timings --dns 10.1.2.3 --dns-search example.org -h myhost --add-host foo:10.9.9.9 "oci:$img" sh -c "
echo L1=\$(timeout 30 wget -q -O - http://10.88.0.1:8000/file.txt 2>&1)
echo PEER=\$(timeout 30 wget -q -O - http://$srv_ip/ 2>&1)
echo HOSTNAME=\$(hostname) ETC_HOSTNAME=\$(cat /etc/hostname)
echo RESOLV=\$(grep nameserver /etc/resolv.conf | tr ' ' _) SEARCH=\$(grep search /etc/resolv.conf | tr ' ' _)
echo FOO=\$(grep -w foo /etc/hosts | tr '\t ' __)
echo SELF=\$(grep -w myhost /etc/hosts | cut -f1 | cut -d. -f1-2)
echo IFACES=\$(ls /sys/class/net | tr '\n' ,)
echo MTU=\$(cat /sys/class/net/eth0/mtu)
" >$w/client.out 2>$w/client.err
case_ client_rc "$?"
echo "MEASURE client_run $(took "$t") s" >&2
cat $w/client.out >&2; grep timings $w/client.err >&2; grep -v timings $w/client.err >&2
for k in L1 PEER HOSTNAME ETC_HOSTNAME RESOLV SEARCH FOO SELF IFACES MTU; do
    case_ "client_$k" "$(tr ' ' '\n' <$w/client.out | sed -n "s/^$k=//p" | head -1)"
done
# While srv runs: only its rules, namespace and lease.
case_ during_srv "$(leftovers)"

# --network none: only lo in the guest (no NIC at all), still the name files.
t=$(now)
out=$(husk run -q --timings --network none -h lonely "oci:$img" sh -c 'echo IFACES=$(ls /sys/class/net | tr "\n" ,) DEV=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " " | tr "\n" ,) HOST=$(hostname) HOSTS=$(grep -c lonely /etc/hosts)' 2>$w/none.err)
case_ none_rc "$?"
echo "MEASURE none_run $(took "$t") s" >&2
grep timings $w/none.err >&2
case_ none "$(echo $out | tr ' ' _)"
case_ after_none "$(leftovers)"

# srv goes: nothing of it stays.
t=$(now)
husk rm -f srv
case_ rm_srv "$?"
echo "MEASURE rm_srv $(took "$t") s" >&2
sleep 1
case_ after_srv "$(leftovers)"

# kill -9 of husk while its VM runs: the next husk call removes the network.
"$real_husk" run -q --name victim "oci:$img" sleep 600 >/dev/null 2>&1 &
hpid=$!
for _ in $(seq 1200); do [ -S /run/husk/victim/vm/vsock.sock ] && grep -q '"result": {' /run/husk/.networks/victim.json 2>/dev/null && break; sleep 0.1; done
sleep 3
case_ victim_attached "$(leftovers | grep -o 'netns=[0-9]* veth=[0-9]*')"
kill -9 "$hpid"; wait "$hpid" 2>/dev/null
sleep 1
t=$(now)
husk ps >/dev/null
echo "MEASURE reap_after_kill9 $(took "$t") s" >&2
case_ after_kill9 "$(leftovers)"

# Errors: 125, a clear message, nothing left.
husk run -q --network nope "oci:$img" true 2>$w/e1; case_ unknown_network "$? $(grep -c 'known ones are husk' $w/e1)"
husk run -q -p 80 "oci:$img" true 2>$w/e2; case_ bad_publish "$? $(grep -c -- '-p "80"' $w/e2)"
husk run -q --network none -p 8080:80 "oci:$img" true 2>$w/e3; case_ publish_none "$?"
printf '[network]\nplugin_dir = "/no/cni/here"\n' >$w/noplugins.toml
husk --config $w/noplugins.toml run -q "oci:$img" true 2>$w/e4; case_ no_plugins "$? $(grep -c 'containernetworking-plugins' $w/e4)"
mkdir -p $w/netd
cat >$w/netd/10-broken.conflist <<'JSON'
{"cniVersion": "1.0.0", "name": "broken", "plugins": [{"type": "bridge", "bridge": "brk0", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/33"}]]}}]}
JSON
cat >$w/netd/20-other.conflist <<'JSON'
{"cniVersion": "0.4.0", "name": "other", "plugins": [{"type": "bridge", "bridge": "oth0", "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.77.7.0/24"}}, {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
echo '{"name": "bad"}' >$w/netd/30-bad.conflist
printf '[network]\nconfig_dir = "%s/netd"\n' "$w" >$w/netd.toml
husk --config $w/netd.toml run -q --network broken "oci:$img" true 2>$w/e5; case_ failing_plugin "$? $(grep -c 'CNI plugin bridge (ADD, network broken) failed: ' $w/e5)"
cat $w/e1 $w/e2 $w/e3 $w/e4 $w/e5 >&2
husk --config $w/netd.toml network ls >$w/ls.out 2>$w/ls.err
case_ network_ls "$? $(awk 'NR > 1 {print $1}' $w/ls.out | tr '\n' ,)"
case_ network_ls_other "$(awk '$1 == "other" {print $2, $3, $4}' $w/ls.out | tr ' ' _)"
case_ network_ls_bad "$(grep -c '30-bad.conflist: cniVersion' $w/ls.err)"
cat $w/ls.out $w/ls.err >&2
ip link del brk0 2>/dev/null
case_ after_errors "$(leftovers)"

kill "$httpd_pid" 2>/dev/null
echo "--- iptables at the end" >&2; iptables-save >&2
rm -rf "$w"
