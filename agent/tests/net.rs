//! husk-agent on this host in a network namespace the test made (protocol 0.4): a
//! veth NIC found by its MAC, renamed, given its MTU and addresses (UpdateInterface)
//! and its routes (UpdateRoutes), checked with `ip -j`; and the sandbox's name files
//! (CreateSandbox's etc_hosts/etc_resolv_conf/etc_hostname) seen by busybox
//! containers at /etc/hosts, /etc/resolv.conf and /etc/hostname. No packet leaves the
//! namespace (the veth's peer is in it too). Needs root; skipped loudly
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk_agent_protocol::agent::*;
use husk_agent_protocol::agent_ttrpc::AgentClient;
use husk_agent_protocol::client::Endpoint;
use husk_agent_protocol::spec::default_spec;
use husk_tests::agent::{create_req, ctx, dir_rootfs, rpc_error, stdio};
use serde_json::{Value, json};

const MAC: &str = "02:11:22:33:44:55";

/// A network namespace `husk-t-<pid>-<tag>`, deleted on drop (also when a test fails).
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("husk-t-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(&["ip", "netns", "add", &name]);
        NetNs { name }
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n NS ARGS…`, which must succeed; its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip(&all)).unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    ep: Endpoint,
    rootfs: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        husk_tests::agent::stop(&mut self.child);
    }
}

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var_os("HUSK_REQUIRE_LAB").is_some() {
                panic!("this test needs root (network namespaces, mounts, cgroups)");
            }
            eprintln!("SKIPPED: this test needs root (network namespaces, mounts, cgroups)");
            return;
        }
    };
}

/// The agent, in `ns`'s network namespace (nsenter: only the network namespace, the
/// agent keeps this host's mounts and cgroups).
fn start_agent(ns: &NetNs) -> Agent {
    let dir = tempfile::Builder::new()
        .prefix("husk-agent-net-")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = dir.path().join("rootfs");
    husk_tests::agent::busybox_rootfs(&rootfs);
    let sock = dir.path().join("agent.sock");
    let child = Command::new("nsenter")
        .arg(format!("--net={}", ns.path()))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_husk-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("HUSK_AGENT_LOG", "info,libcontainer=warn,libcgroups=error")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let stdio = dir.path().join("agent.sock.stdio");
    while !(sock.exists() && stdio.exists()) {
        assert!(Instant::now() < deadline, "agent socket did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent {
        child,
        ep: Endpoint::Unix(sock),
        rootfs,
        dir,
    }
}

fn iface(mac: &str, name: &str, addrs: &[&str], mtu: u32) -> UpdateInterfaceRequest {
    let mut r = UpdateInterfaceRequest::new();
    r.mac = mac.into();
    r.name = name.into();
    r.addresses = addrs.iter().map(|s| s.to_string()).collect();
    r.mtu = mtu;
    r
}

fn routes(list: &[(&str, &str, &str)]) -> UpdateRoutesRequest {
    let mut req = UpdateRoutesRequest::new();
    req.routes = list
        .iter()
        .map(|(d, g, dev)| {
            let mut r = Route::new();
            r.destination = d.to_string();
            r.gateway = g.to_string();
            r.device = dev.to_string();
            r
        })
        .collect();
    req
}

/// eth0's addresses but IPv6 link-local ones (the kernel's), as "ADDR/PREFIX".
fn addresses(ns: &NetNs) -> BTreeSet<String> {
    let v = ns.ip_json(&["addr", "show", "dev", "eth0"]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The main table's routes through eth0, as "DST[ via GW] PROTO".
fn routes_of_eth0(ns: &NetNs, family: &str) -> BTreeSet<String> {
    let v = ns.ip_json(&[family, "route", "show", "dev", "eth0"]);
    v.as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            let d = r["dst"].as_str().unwrap_or("");
            !d.starts_with("fe80:") && !d.starts_with("ff00:")
        })
        .map(|r| {
            let via = r["gateway"]
                .as_str()
                .map(|g| format!(" via {g}"))
                .unwrap_or_default();
            format!(
                "{}{via} {}",
                r["dst"].as_str().unwrap(),
                r["protocol"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interfaces_and_routes() {
    require_root!();
    let ns = NetNs::new("if");
    // A veth pair inside the namespace (the dummy driver is not in every kernel); its
    // peer up, so that the link has carrier.
    ns.ip(&[
        "link", "add", "d0", "address", MAC, "type", "veth", "peer", "name", "d1",
    ]);
    ns.ip(&["link", "set", "d1", "up"]);
    let a = start_agent(&ns);
    let c = a.ep.agent().await.unwrap();

    // Found by its MAC, renamed, MTU, both families, up.
    c.update_interface(
        ctx(),
        &iface(MAC, "eth0", &["10.200.0.5/24", "fd00:200::5/64"], 1400),
    )
    .await
    .unwrap();
    let link = ns.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(link[0]["address"], MAC, "{link}");
    assert_eq!(link[0]["mtu"], 1400, "{link}");
    assert!(
        link[0]["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    assert!(
        Command::new("ip")
            .args(["-n", &ns.name, "link", "show", "dev", "d0"])
            .output()
            .unwrap()
            .stdout
            .is_empty(),
        "d0 is gone"
    );
    assert_eq!(addresses(&ns), set(&["10.200.0.5/24", "fd00:200::5/64"]));

    // Routes: a default route and a link route; the kernel's link route stays.
    c.update_routes(
        ctx(),
        &routes(&[
            ("0.0.0.0/0", "10.200.0.1", "eth0"),
            ("10.201.0.0/16", "", "eth0"),
            ("::/0", "fd00:200::1", "eth0"),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        routes_of_eth0(&ns, "-4"),
        set(&[
            "default via 10.200.0.1 static",
            "10.200.0.0/24 kernel",
            "10.201.0.0/16 static"
        ])
    );
    assert!(
        routes_of_eth0(&ns, "-6").contains("default via fd00:200::1 static"),
        "{:?}",
        routes_of_eth0(&ns, "-6")
    );
    let r = ns.ip_json(&["-4", "route", "show", "10.201.0.0/16"]);
    assert_eq!(r[0]["scope"], "link", "{r}");

    // Replaced: the earlier non-kernel routes go, including one added by hand.
    ns.ip(&["route", "add", "10.202.0.0/16", "dev", "eth0"]);
    c.update_routes(ctx(), &routes(&[("0.0.0.0/0", "10.200.0.1", "eth0")]))
        .await
        .unwrap();
    assert_eq!(
        routes_of_eth0(&ns, "-4"),
        set(&["default via 10.200.0.1 static", "10.200.0.0/24 kernel"])
    );
    assert_eq!(
        routes_of_eth0(&ns, "-6"),
        set(&["fd00:200::/64 kernel"]),
        "the IPv6 default route went too"
    );
    // The same again: not an error.
    c.update_routes(ctx(), &routes(&[("0.0.0.0/0", "10.200.0.1", "eth0")]))
        .await
        .unwrap();

    // Addresses replaced (same name: no rename, MTU 0 leaves it).
    c.update_interface(ctx(), &iface(MAC, "eth0", &["10.200.1.7/24"], 0))
        .await
        .unwrap();
    assert_eq!(addresses(&ns), set(&["10.200.1.7/24"]));
    let link = ns.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(link[0]["mtu"], 1400, "{link}");

    // Errors. A name another interface has: refused, and the NIC stays up.
    ns.ip(&["link", "add", "taken0", "type", "bridge"]);
    let (code, msg) = rpc_error(
        c.update_interface(ctx(), &iface(MAC, "taken0", &[], 0))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");
    assert!(msg.contains("rename eth0 to taken0"), "{msg}");
    let link = ns.ip_json(&["link", "show", "dev", "eth0"]);
    assert!(
        link[0]["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    let (code, msg) = rpc_error(
        c.update_interface(ctx(), &iface("02:00:00:00:00:99", "eth1", &[], 0))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("02:00:00:00:00:99"), "{msg}");
    let (code, msg) = rpc_error(
        c.update_interface(ctx(), &iface(MAC, "eth0", &["10.200.1.300/24"], 0))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("addresses[0]") && msg.contains("10.200.1.300/24"),
        "{msg}"
    );
    let (code, msg) = rpc_error(
        c.update_routes(ctx(), &routes(&[("10.9.0.0/16", "", "nope0")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("routes[0].device"), "{msg}");
    let (code, msg) = rpc_error(
        c.update_routes(ctx(), &routes(&[("0.0.0.0/0", "10.99.0.1", "eth0")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("routes[0]") && msg.contains("10.99.0.1"),
        "{msg}"
    );
    let (code, msg) = rpc_error(
        c.update_routes(ctx(), &routes(&[("10.9.0.5/16", "", "eth0")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("routes[0].destination"), "{msg}");
    // The agent lives on.
    c.update_interface(ctx(), &iface(MAC, "eth0", &["10.200.1.7/24"], 0))
        .await
        .unwrap();

    // A clone of a template (protocol 0.6): no NIC has the new MAC; the one with
    // current_mac takes it (it was up: set down, changed, renamed, up again).
    const CLONE_MAC: &str = "02:00:00:00:00:77";
    let mut clone = iface(CLONE_MAC, "eth0", &["10.200.2.9/24"], 0);
    clone.current_mac = MAC.into();
    c.update_interface(ctx(), &clone).await.unwrap();
    let link = ns.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(link[0]["address"], CLONE_MAC, "{link}");
    assert!(
        link[0]["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    assert_eq!(addresses(&ns), set(&["10.200.2.9/24"]));
    // Sent again (a retry): the NIC with the MAC is found, current_mac is not needed.
    c.update_interface(ctx(), &clone).await.unwrap();
    // Neither address on any NIC: NOT_FOUND naming both.
    let mut none = iface("02:00:00:00:00:98", "eth0", &[], 0);
    none.current_mac = "02:00:00:00:00:99".into();
    let (code, msg) = rpc_error(c.update_interface(ctx(), &none).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(
        msg.contains("02:00:00:00:00:98") && msg.contains("02:00:00:00:00:99"),
        "{msg}"
    );
}

/// Runs `spec` in a container to its end; its stdout, stderr and exit status.
async fn run(a: &Agent, c: &AgentClient, id: &str, spec: Value) -> (String, String, i32) {
    let o = husk_tests::agent::run(
        &a.ep,
        c,
        &dir_rootfs(&a.rootfs.display().to_string()),
        id,
        spec,
        None,
    )
    .await;
    (o.stdout(), o.stderr(), o.exit.exit_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_name_files() {
    require_root!();
    let ns = NetNs::new("files");
    let a = start_agent(&ns);
    let c = a.ep.agent().await.unwrap();
    let hosts = "127.0.0.1 localhost\n10.200.0.5 pod-a\n";
    let resolv = "nameserver 10.200.0.1\nsearch example.internal\n";
    let hostname = "pod-a\n";

    // Too large: refused, naming the field.
    let mut big = CreateSandboxRequest::new();
    big.etc_resolv_conf = vec![b'#'; (64 << 10) + 1];
    let (code, msg) = rpc_error(c.create_sandbox(ctx(), &big).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("etc_resolv_conf"), "{msg}");

    let mut sb = CreateSandboxRequest::new();
    sb.etc_hosts = hosts.as_bytes().to_vec();
    sb.etc_resolv_conf = resolv.as_bytes().to_vec();
    sb.etc_hostname = hostname.as_bytes().to_vec();
    c.create_sandbox(ctx(), &sb).await.unwrap();

    // The image has none of the three files: made, then bound.
    assert!(!a.rootfs.join("etc/hosts").exists());
    let cat = ["cat", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];
    let (out, err, st) = run(&a, &c, "names", default_spec(&cat)).await;
    assert_eq!(
        (out.as_str(), st),
        (format!("{hosts}{resolv}{hostname}").as_str(), 0),
        "{err}"
    );

    // Read-write, as under docker: the container may edit its hosts file.
    let spec = default_spec(&[
        "sh",
        "-c",
        "echo 10.0.0.9 extra >>/etc/hosts && tail -n1 /etc/hosts",
    ]);
    let (out, err, st) = run(&a, &c, "rw", spec).await;
    assert_eq!((out.as_str(), st), ("10.0.0.9 extra\n", 0), "{err}");

    // A read-only root still gets them.
    let mut spec = default_spec(&cat);
    spec["root"]["readonly"] = json!(true);
    let (out, err, st) = run(&a, &c, "ro", spec).await;
    assert!(out.ends_with(&format!("{resolv}{hostname}")), "{out} {err}");
    assert_eq!(st, 0, "{err}");

    // A spec with its own /etc/hosts keeps it (and still gets the two others).
    let own = a.dir.path().join("own-hosts");
    std::fs::write(&own, "10.1.1.1 mine\n").unwrap();
    let mut spec = default_spec(&cat);
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/etc/hosts", "type": "bind",
        "source": own.display().to_string(), "options": ["rbind", "ro"]
    }));
    let (out, err, st) = run(&a, &c, "own", spec).await;
    assert_eq!(
        (out.as_str(), st),
        (format!("10.1.1.1 mine\n{resolv}{hostname}").as_str(), 0),
        "{err}"
    );

    // A spec may still not bind the agent's copy itself (the agent's state).
    let mine = a.dir.path().join("state/sandbox/hosts");
    assert!(mine.is_file());
    let mut spec = default_spec(&["true"]);
    spec["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/x", "type": "bind",
        "source": mine.display().to_string(), "options": ["rbind"]
    }));
    let mut r = create_req(
        &dir_rootfs(&a.rootfs.display().to_string()),
        "steal",
        &spec,
        stdio(false, false, false),
    );
    r.stdio = Some(Stdio::new()).into();
    let (code, msg) = rpc_error(c.create_container(ctx(), &r).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("agent's state"), "{msg}");
}
