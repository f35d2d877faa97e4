//! Port-forward into a pod's VM, on this host without a VM (crate::network::portfwd):
//! the test makes a network namespace (`ip netns add husk-pf-test-<pid>`, `lo` up), sets
//! the forward up in it with a fake opener (a unix socket pair whose far end says which
//! port it was asked for, then echoes), and from a thread inside the namespace dials
//! `127.0.0.1:<port>` as containerd's CRI PortForward does: the echoed bytes come back,
//! with the port dialed; an opener's failure closes the connection; teardown deletes
//! the iptables rule. Needs root and iptables' nat table; skipped loudly otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk::network::netns::Netns;
use husk::network::portfwd::{self, Opener, PortForward};
use husk_agent_protocol::client::ClientError;
use tokio::io::{AsyncWriteExt, BufReader as AsyncBufReader};

/// A namespace made with `ip netns add`, deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn skip(name: &str, reason: &str) {
    if std::env::var_os("HUSK_REQUIRE_LAB").is_some() {
        panic!("{name}: {reason}");
    }
    eprintln!("SKIPPED {name}: {reason}");
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A namespace with `lo` up and a usable nat table, or why not.
fn make_netns(tag: &str) -> Result<TestNetns, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, iptables)".into());
    }
    let ns = TestNetns {
        name: format!("husk-pf-test-{}-{tag}", std::process::id()),
    };
    run(Command::new("ip").args(["netns", "add", &ns.name]))?;
    run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
    run(Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["iptables", "-w", "-t", "nat", "-S", "OUTPUT"]))
    .map_err(|e| format!("iptables' nat table is not usable here: {e}"))?;
    Ok(ns)
}

fn nat_rules(ns: &TestNetns) -> String {
    run(Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["iptables", "-w", "-t", "nat", "-S", "OUTPUT"]))
    .unwrap()
}

/// A fake agent: each stream first says `port <p>\n`, then echoes until EOF; ports in
/// `refuse` fail as the agent's refusal would. Records the ports asked for.
fn fake_opener(asked: Arc<Mutex<Vec<u16>>>, refuse: &'static [u16]) -> Opener {
    Arc::new(move |port| {
        let asked = asked.clone();
        Box::pin(async move {
            asked.lock().unwrap().push(port);
            if refuse.contains(&port) {
                return Err(ClientError::ForwardRefused {
                    port,
                    msg: "connect to 127.0.0.1: Connection refused".into(),
                });
            }
            let (ours, theirs) = tokio::net::UnixStream::pair()?;
            tokio::spawn(async move {
                let (r, mut w) = theirs.into_split();
                w.write_all(format!("port {port}\n").as_bytes())
                    .await
                    .unwrap();
                let mut r = AsyncBufReader::new(r);
                tokio::io::copy_buf(&mut r, &mut w).await.unwrap();
                w.shutdown().await.unwrap();
            });
            Ok(ours)
        })
    })
}

/// Dials 127.0.0.1:port from a thread inside the namespace, sends `data`, half-closes,
/// and returns (the first line, the rest) or the error.
async fn dial(ns: &TestNetns, port: u16, data: Vec<u8>) -> std::io::Result<(String, Vec<u8>)> {
    let ns = Netns::at(&ns.path());
    tokio::task::spawn_blocking(move || {
        ns.run(move || -> std::io::Result<(String, Vec<u8>)> {
            let t = TcpStream::connect(("127.0.0.1", port))?;
            t.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut w = t.try_clone()?;
            let writer = std::thread::spawn(move || -> std::io::Result<()> {
                w.write_all(&data)?;
                w.shutdown(Shutdown::Write)
            });
            let mut r = BufReader::new(t);
            let mut first = String::new();
            r.read_line(&mut first)?;
            let mut rest = Vec::new();
            r.read_to_end(&mut rest)?;
            let _ = writer.join();
            Ok((first, rest))
        })
        .map_err(std::io::Error::other)?
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_in_the_pod_namespace_reaches_the_guest() {
    let name = "localhost_in_the_pod_namespace_reaches_the_guest";
    let ns = match make_netns("a") {
        Ok(ns) => ns,
        Err(reason) => return skip(name, &reason),
    };
    // A stale rule from a killed shim is replaced, not kept beside the new one.
    run(Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args([
            "iptables",
            "-w",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1/32",
            "-m",
            "comment",
            "--comment",
            portfwd::COMMENT,
            "-j",
            "REDIRECT",
            "--to-ports",
            "9",
        ]))
    .unwrap();

    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut fwd = PortForward::start(&ns.path(), fake_opener(asked.clone(), &[5555])).unwrap();
    let lport = fwd.listener_port();
    let rules = nat_rules(&ns);
    let ours: Vec<&str> = rules
        .lines()
        .filter(|l| l.contains(portfwd::COMMENT))
        .collect();
    assert_eq!(ours.len(), 1, "{rules}");
    assert!(ours[0].ends_with(&format!("--to-ports {lport}")), "{rules}");

    // Two ports, one 1 MiB of bytes: each reaches the guest's side under its own port.
    for port in [8080u16, 443] {
        let (first, rest) = dial(&ns, port, b"hello through the VM".to_vec())
            .await
            .unwrap();
        assert_eq!(first, format!("port {port}\n"));
        assert_eq!(rest, b"hello through the VM");
    }
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let (first, rest) = dial(&ns, 30000, big.clone()).await.unwrap();
    assert_eq!(first, "port 30000\n");
    assert!(rest == big, "1 MiB echoed: {} bytes back", rest.len());
    assert_eq!(*asked.lock().unwrap(), [8080, 443, 30000]);

    // The guest refuses: the connection is closed (no hang, nothing read).
    let r = dial(&ns, 5555, b"x".to_vec()).await;
    match r {
        Ok((first, rest)) => assert!(first.is_empty() && rest.is_empty(), "{first:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    assert_eq!(asked.lock().unwrap().last(), Some(&5555));

    // Teardown: the rule goes, and localhost is the namespace's own again.
    fwd.stop();
    let rules = nat_rules(&ns);
    assert!(!rules.contains(portfwd::COMMENT), "{rules}");
    let e = dial(&ns, 8080, b"x".to_vec()).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    fwd.stop(); // idempotent
    drop(fwd);
    drop(ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_is_not_there_is_an_error_and_leaves_nothing() {
    let e = PortForward::start(
        std::path::Path::new("/var/run/netns/husk-pf-test-none"),
        fake_opener(Arc::default(), &[]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("husk-pf-test-none"), "{e}");
}

/// The pod network's wiring: a namespace with an `eth0` (one end of a veth whose other
/// end stays in the namespace too, so the host's own links are untouched) and an
/// address, joined as the shim joins a CRI pod's; the forward started on it, then
/// `detach` takes out the forward's rule and the tc redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_network_starts_and_stops_the_forward() {
    let name = "the_pod_network_starts_and_stops_the_forward";
    let ns = match make_netns("b") {
        Ok(ns) => ns,
        Err(reason) => return skip(name, &reason),
    };
    let ip = |args: &[&str]| {
        let mut a = vec!["-n", ns.name.as_str()];
        a.extend_from_slice(args);
        run(Command::new("ip").args(&a)).unwrap()
    };
    ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["addr", "add", "10.211.0.2/24", "dev", "eth0"]);
    ip(&["link", "set", "eth0", "up"]);
    ip(&["link", "set", "peer0", "up"]);
    ip(&["route", "add", "default", "via", "10.211.0.1"]);

    let mut net = husk::network::pod::attach(&ns.path()).unwrap();
    assert_eq!(net.guest.addresses, ["10.211.0.2/24"]);
    assert!(net.port_forward().is_none());
    let asked = Arc::new(Mutex::new(Vec::new()));
    net.start_port_forward(fake_opener(asked.clone(), &[]));
    let lport = net.port_forward().expect("started").listener_port();
    assert!(nat_rules(&ns).contains(&format!("--to-ports {lport}")));
    let (first, rest) = dial(&ns, 9090, b"via the pod network".to_vec())
        .await
        .unwrap();
    assert_eq!(first, "port 9090\n");
    assert_eq!(rest, b"via the pod network");

    net.detach();
    let rules = nat_rules(&ns);
    assert!(!rules.contains(portfwd::COMMENT), "{rules}");
    let qdiscs = ip(&["-d", "link", "show", "dev", "eth0"]);
    let tc = run(Command::new("nsenter")
        .arg(format!("--net={}", ns.path().display()))
        .args(["tc", "qdisc", "show", "dev", "eth0"]))
    .unwrap();
    assert!(!tc.contains("ingress"), "{tc}\n{qdiscs}");
    assert_eq!(*asked.lock().unwrap(), [9090]);
}

/// The whole host side with a real agent (husk-agent on this host, `--listen unix:`,
/// its forwards dialing 127.0.0.1 in the host's namespace, where the test's echo
/// server is): namespace → REDIRECT → the shim's listener → the agent's forward stream
/// → the server. Only the VM's vsock is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_host_agent() {
    let name = "through_a_host_agent";
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| husk_tests::repo_root().join("target"))
        .join("debug/husk-agent");
    if !bin.is_file() {
        return skip(
            name,
            &format!(
                "no husk-agent at {} (cargo build -p husk-agent)",
                bin.display()
            ),
        );
    }
    let ns = match make_netns("c") {
        Ok(ns) => ns,
        Err(reason) => return skip(name, &reason),
    };
    let dir = tempfile::Builder::new()
        .prefix("husk-pf-agent-")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = dir.path().join("agent.sock");
    let mut child = Command::new(&bin)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("HUSK_AGENT_LOG", "warn")
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let fwd_sock = husk_agent_protocol::forward::unix_path(&sock);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fwd_sock.exists() {
        assert!(
            child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline,
            "no {} from {} (an agent older than port forwards? cargo build -p husk-agent)",
            fwd_sock.display(),
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _agent = Kill(child);

    // An echo server in the host's namespace (the "guest's" here).
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (t, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = t.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let endpoint = husk_agent_protocol::client::Endpoint::Unix(sock.clone());
    let mut fwd = PortForward::start(&ns.path(), portfwd::agent_opener(endpoint)).unwrap();
    let mut data = b"first line\n".to_vec();
    data.extend((0..256u32 << 10).map(|i| (i % 241) as u8));
    let (first, rest) = dial(&ns, port, data.clone()).await.unwrap();
    assert_eq!(first, "first line\n");
    assert!(rest == data[11..], "{} bytes back", rest.len());

    // Nothing listens on the port in the "guest": the agent refuses, the connection
    // closes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match dial(&ns, closed, b"x".to_vec()).await {
        Ok((first, rest)) => assert!(first.is_empty() && rest.is_empty(), "{first:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }
    fwd.stop();
    assert!(!nat_rules(&ns).contains(portfwd::COMMENT));
}
