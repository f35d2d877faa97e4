//! System test of `husk run`'s networks in the lab (shim/tests/network.sh drives it
//! there; the L1 has no network device, so every packet stays inside it): the default
//! CNI network `husk` (bridge husk0, 10.88.0.0/16): a detached server container's
//! address and default route, `-p 8080:80` answering on the L1's localhost and bridge
//! address, a second container fetching from an HTTP server on the L1's side of the
//! bridge and from the first container, `--dns`/`--dns-search`, `-h`, `--add-host` in
//! its name files; `--network none` (only lo); `husk network ls` with a configuration
//! folder (a broken file named); clear errors (unknown network, bad -p, -p with none,
//! no plugin folder, a failing plugin: 125 and its message). After each case and after
//! `kill -9` of husk while its VM runs (then `husk ps`): no namespace, veth, iptables
//! rule or chain of a container, IPAM lease, VM or folder left. Prints the measured
//! times (module loading, runs, CNI ADD/DEL from `--timings`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_tests::require_lab;

#[test]
fn networks_in_the_lab() {
    let lab = require_lab!();
    let guest = husk_tests::repo_root().join("build/guest");
    assert!(
        guest.join("initramfs.img").is_file(),
        "no guest image: run `make guest-image` (make test does)"
    );
    husk_tests::ensure_husk_vmm(std::path::Path::new(env!("CARGO_BIN_EXE_husk")));
    let scratch = husk_tests::scratch_dir();
    let img = scratch.path().join("busybox");
    husk_tests::busybox_oci(&img, None);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/network.sh");
    let started = Instant::now();
    let r = lab
        .mem_mib(3072)
        .timeout(Duration::from_secs(1800))
        .env("HUSK_GUEST_DIR", &guest.display().to_string())
        .run(&[
            script.display().to_string(),
            env!("CARGO_BIN_EXE_husk").to_string(),
            img.display().to_string(),
        ])
        .unwrap();
    eprintln!("lab run: {:.0} s", started.elapsed().as_secs_f64());
    // The measurements, in the test's output also when it passes.
    for l in r.stderr.lines() {
        if l.starts_with("MEASURE ") || l.contains("timings:") || l.starts_with("case ") {
            eprintln!("{l}");
        }
    }
    let all = format!("--- stdout\n{}\n--- stderr\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    let cases: HashMap<&str, &str> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CASE "))
        .map(|l| l.split_once(' ').unwrap_or((l, "")))
        .collect();
    let get = |k: &str| cases.get(k).copied().unwrap_or("<missing>");
    let check = |k: &str, want: &str| {
        assert_eq!(get(k), want, "case {k}\n{all}");
    };
    let nothing = "netns=0 veth=0 taps=0 rules=0 leases=0 procs=0 dirs=0";
    check("modules", "ok");
    check("before", nothing);
    check("srv_started", "0 srv");
    check("srv_ip", "10.88");
    check("srv_eth0", "1");
    check("srv_route", "default_via_10.88.0.1");
    check("publish_localhost", "hello-from-srv");
    check("publish_bridge_ip", "hello-from-srv");
    check("l1_to_srv", "hello-from-srv");
    check("client_rc", "0");
    check("client_L1", "hello-from-l1");
    check("client_PEER", "hello-from-srv");
    check("client_HOSTNAME", "myhost");
    check("client_ETC_HOSTNAME", "myhost");
    check("client_RESOLV", "nameserver_10.1.2.3");
    check("client_SEARCH", "search_example.org");
    check("client_FOO", "10.9.9.9_foo");
    check("client_SELF", "10.88");
    check("client_IFACES", "eth0,lo,");
    check("client_MTU", "1500");
    // srv running: its namespace, veth, lease and VM; rules of its own.
    let during = get("during_srv");
    assert!(
        during.starts_with("netns=1 veth=1 taps=0 rules=")
            && during.ends_with(" leases=1 procs=1 dirs=1")
            && !during.contains("rules=0 "),
        "during_srv {during}\n{all}"
    );
    check("none_rc", "0");
    check("none", "IFACES=lo,_DEV=lo,_HOST=lonely_HOSTS=1");
    let after_none = get("after_none");
    assert!(
        after_none.starts_with("netns=1 veth=1 ")
            && after_none.ends_with(" leases=1 procs=1 dirs=1"),
        "after_none {after_none}\n{all}"
    );
    check("rm_srv", "0");
    check("after_srv", nothing);
    check("victim_attached", "netns=1 veth=1");
    check("after_kill9", nothing);
    check("unknown_network", "125 1");
    check("bad_publish", "125 1");
    check("publish_none", "125");
    check("no_plugins", "125 1");
    check("failing_plugin", "125 1");
    check("network_ls", "0 husk,broken,other,none,");
    let other = get("network_ls_other");
    assert!(
        other.starts_with("bridge,portmap_10.77.7.0/24_/tmp/husk-network-test.")
            && other.ends_with("/netd/20-other.conflist"),
        "network_ls_other {other}\n{all}"
    );
    check("network_ls_bad", "1");
    check("after_errors", nothing);
}
