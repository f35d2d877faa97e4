//! husk's network plumbing on this host, without a VM: in a network and mount namespace
//! the test makes (the test binary re-runs itself under `unshare --net --mount`; the
//! host's own network, iptables rules and /var/lib/cni are never touched), the real CNI
//! plugins (Debian's containernetworking-plugins) attach a container: a namespace under
//! the run folder, the bridge, an address, the tap joined to eth0 by tc redirects (a
//! ping from the bridge arrives on the tap's fd as an ARP request for the container's
//! address), a published port's DNAT rule; then detach, and the reaping of a network
//! whose husk died: no namespace, veth, iptables rule or IPAM lease left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use husk::config::NetworkSettings;
use husk::network;

const INNER: &str = "HUSK_NETWORK_HOST_INNER";

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host's view, with what the check looks for.
fn leftovers(run: &Path, id: &str) -> String {
    format!(
        "netns={} veth={} iptables={} leases={}",
        std::fs::read_dir(run.join(".networks"))
            .map(|d| d
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ns"))
                .count())
            .unwrap_or(0),
        sh("ip -o link show type veth | wc -l").trim(),
        sh(&format!("iptables-save | grep -c -- '{id}'")).trim(),
        sh("ls /var/lib/cni/networks/husk 2>/dev/null | grep -c '^10\\.'").trim(),
    )
}

fn inner() {
    // A private /var/lib/cni (host-local's leases) and run folder.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", "/var/lib/cni"])
        .status();
    if !st.is_ok_and(|s| s.success()) {
        std::fs::create_dir_all("/var/lib/cni").unwrap();
        assert!(
            Command::new("mount")
                .args(["-t", "tmpfs", "tmpfs", "/var/lib/cni"])
                .status()
                .unwrap()
                .success()
        );
    }
    let run = tempfile::tempdir().unwrap();
    let settings = NetworkSettings::default();
    let list = network::find(&settings, "husk").unwrap();
    let ports = [network::ports::parse_publish("8080:80").unwrap()];
    std::fs::create_dir_all(run.path().join("c1")).unwrap();
    std::fs::write(
        run.path().join("c1/owner"),
        format!("{}\n", husk::procid::ProcId::me().to_record()),
    )
    .unwrap();
    let t0 = Instant::now();
    let a = network::attach(&settings, run.path(), "c1", &list, &ports).unwrap();
    eprintln!(
        "attach: {:?} (CNI ADD {:?}, tap {:?}); guest {:?}",
        t0.elapsed(),
        a.add_time,
        a.tap_time,
        a.guest
    );
    assert_eq!(a.guest.addresses.len(), 1);
    assert!(a.guest.addresses[0].starts_with("10.88."), "{:?}", a.guest);
    assert_eq!(
        a.guest.routes,
        [("0.0.0.0/0".to_string(), "10.88.0.1".to_string())]
    );
    let ns = run.path().join(".networks/c1.ns");
    let inside = |cmd: &str| sh(&format!("nsenter --net={} {cmd}", ns.display()));
    let links = inside("ip -o link show");
    assert!(links.contains("tap0") && links.contains("eth0"), "{links}");
    let filters =
        inside("tc filter show dev eth0 ingress") + &inside("tc filter show dev tap0 ingress");
    assert_eq!(filters.matches("mirred").count(), 2, "{filters}");
    assert!(
        filters.contains("Redirect to device tap0") && filters.contains("Redirect to device eth0"),
        "{filters}"
    );
    let eth0 = inside("ip link show dev eth0");
    assert!(
        eth0.contains(&format!("link/ether {} ", a.guest.mac)),
        "{eth0}"
    );
    let nat = sh("iptables-save -t nat");
    assert!(nat.contains("--dport 8080") && nat.contains("c1"), "{nat}");
    // Datagrams from the bridge side come out of the tap (or their ARP request).
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let fd = a.tap_fd().unwrap();
    let mut seen = Vec::new();
    let mut arp_for = None;
    for _ in 0..50 {
        let _ = udp.send_to(b"x", (a.guest.ips[0], 9));
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives for the call.
        if unsafe { libc::poll(&mut pfd, 1, 3000) } <= 0 {
            break;
        }
        let mut buf = [0u8; 2048];
        // SAFETY: reading into a buffer of the given size from an fd the attachment owns.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // A 10-byte vnet header, then Ethernet: the ethertype at 12.
        if n < 10 + 14 + 28 {
            continue;
        }
        let ethertype = u16::from_be_bytes([buf[22], buf[23]]);
        seen.push(format!("{ethertype:x}"));
        // The ARP request for the container's address, or (the host knows its MAC from
        // the plugin's gratuitous ARP) the datagram itself.
        let at = match ethertype {
            0x0806 => 10 + 14 + 24,
            0x0800 => 10 + 14 + 16,
            _ => continue,
        };
        let t = &buf[at..at + 4];
        let target = std::net::Ipv4Addr::from([t[0], t[1], t[2], t[3]]);
        // Not ours: the host's own multicast (an IGMP report to 224.0.0.22 when the
        // link comes up) or a broadcast can come first.
        if target.is_multicast() || target.is_broadcast() {
            seen.push(format!("to {target}"));
            continue;
        }
        arp_for = Some(std::net::IpAddr::V4(target));
        break;
    }
    assert_eq!(
        arp_for,
        Some(a.guest.ips[0]),
        "ethertypes seen on the tap: {seen:?}"
    );
    // The other way: an ARP request written into the tap ("who has 10.88.0.1, tell
    // <container>", from the container's MAC, as the guest would send it) reaches the
    // bridge through eth0, and the bridge's reply comes back out of the tap.
    let mac: Vec<u8> = a
        .guest
        .mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    let std::net::IpAddr::V4(me) = a.guest.ips[0] else {
        panic!("IPv4 expected")
    };
    let mut frame = vec![0u8; 10]; // the vnet header: no offloads
    frame.extend([0xff; 6]);
    frame.extend(&mac);
    frame.extend([0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend(&mac);
    frame.extend(me.octets());
    frame.extend([0; 6]);
    frame.extend([10, 88, 0, 1]);
    // SAFETY: writing a buffer of the given size to an fd the attachment owns.
    let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n, frame.len() as isize, "write to the tap");
    let mut reply = false;
    for _ in 0..50 {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives for the call.
        if unsafe { libc::poll(&mut pfd, 1, 3000) } <= 0 {
            break;
        }
        let mut buf = [0u8; 2048];
        // SAFETY: reading into a buffer of the given size from an fd the attachment owns.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // An ARP reply (op 2) to our MAC.
        if n >= 10 + 42 && buf[22..24] == [0x08, 0x06] && buf[10 + 20..10 + 22] == [0, 2] {
            assert_eq!(
                &buf[10..16],
                &mac[..],
                "the reply is for the container's MAC"
            );
            reply = true;
            break;
        }
    }
    assert!(reply, "no ARP reply came back through the tap");
    let (took, errors) = a.detach(run.path());
    eprintln!("detach: {took:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        leftovers(run.path(), "c1"),
        "netns=0 veth=0 iptables=0 leases=0"
    );

    // A husk that died with its network attached: the next reap undoes it.
    let a = network::attach(&settings, run.path(), "c1", &list, &ports).unwrap();
    std::mem::forget(a); // as if killed: nothing detached
    let left = leftovers(run.path(), "c1");
    assert!(
        left.starts_with("netns=1 veth=1 iptables=") && left.ends_with(" leases=1"),
        "{left}"
    );
    assert!(!left.contains("iptables=0"), "{left}");
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(run.path().join("c1/owner"), format!("{pid} 1\n")).unwrap();
    let t = Instant::now();
    assert_eq!(network::reap_orphans(run.path()), 1);
    eprintln!("reap: {:?}", t.elapsed());
    assert_eq!(
        leftovers(run.path(), "c1"),
        "netns=0 veth=0 iptables=0 leases=0"
    );
}

#[test]
fn attach_detach_and_reap_in_a_namespace_of_our_own() {
    if std::env::var_os(INNER).is_some() {
        inner();
        return;
    }
    if !husk_tests::tools_present(
        "attach_detach_and_reap_in_a_namespace_of_our_own",
        &["unshare", "nsenter", "ip", "tc", "iptables-save"],
    ) {
        return;
    }
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        eprintln!(
            "SKIPPED attach_detach_and_reap_in_a_namespace_of_our_own: no CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)"
        );
        return;
    }
    let t = Instant::now();
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "attach_detach_and_reap_in_a_namespace_of_our_own",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(120));
}
