//! husk-agent's port forwards on this host (no VM): the agent listens on a unix socket
//! (`--listen unix:PATH`, forwards on `PATH.forward`), the test runs TCP servers on
//! 127.0.0.1 and reaches them through the protocol client's `forward(port)`: bytes
//! both ways (an HTTP-ish exchange, 4 MiB echoed with a half-close), bad headers and a
//! port where nothing listens answered with an error line, not a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use husk_agent_protocol::client::{ClientError, Endpoint};
use husk_agent_protocol::forward;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        husk_tests::agent::stop(&mut self.child);
    }
}

fn start_agent() -> Option<Agent> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("HUSK_REQUIRE_LAB").is_some() {
            panic!("this test needs root (the agent's state folder and cgroups)");
        }
        eprintln!("SKIPPED forward: this test needs root (the agent's state folder and cgroups)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("husk-agent-fwd-")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = dir.path().join("agent.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_husk-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("HUSK_AGENT_LOG", "info,libcontainer=warn,libcgroups=error")
        .spawn()
        .unwrap();
    let mut a = Agent {
        child,
        _dir: dir,
        sock,
    };
    let fwd = forward::unix_path(&a.sock);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fwd.exists() {
        assert!(
            a.child.try_wait().unwrap().is_none(),
            "the agent exited early"
        );
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            fwd.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(a)
}

/// A port where nothing listens (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Sends a raw header to the forward listener and returns the agent's answer line.
async fn raw_answer(a: &Agent, header: &[u8]) -> String {
    let mut s = UnixStream::connect(forward::unix_path(&a.sock))
        .await
        .unwrap();
    s.write_all(header).await.unwrap();
    let line = tokio::time::timeout(
        Duration::from_secs(15),
        husk_agent_protocol::stdio::read_line(&mut s, 1024),
    )
    .await
    .expect("an answer, not a hang")
    .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed after the answer");
    String::from_utf8(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_reach_local_tcp_ports() {
    let Some(a) = start_agent() else { return };
    let ep = Endpoint::Unix(a.sock.clone());

    // An HTTP-ish server: reads a request up to the blank line, answers, closes.
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut t, _) = http.accept().await.unwrap();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") {
                    if t.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    req.push(b[0]);
                }
                let first = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let body = format!("you asked for {first}");
                t.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            });
        }
    });
    for _ in 0..3 {
        let mut s = ep.forward(http_port).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.starts_with("HTTP/1.0 200 OK\r\n"), "{resp}");
        assert!(
            resp.ends_with("you asked for GET /healthz HTTP/1.0"),
            "{resp}"
        );
    }

    // An echo server: 4 MiB through, the host's half-close ends the echo.
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (t, _) = echo.accept().await.unwrap();
        let (mut r, mut w) = t.into_split();
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let s = ep.forward(echo_port).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("the echo ends after the half-close")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echoed bytes differ");

    // Nothing listening: an error, at once.
    let t0 = Instant::now();
    let port = closed_port();
    match ep.forward(port).await {
        Err(ClientError::ForwardRefused { port: p, msg }) => {
            assert_eq!(p, port);
            assert!(msg.contains("refused"), "{msg}");
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // Port 0 never leaves the client.
    assert!(matches!(
        ep.forward(0).await,
        Err(ClientError::ForwardRefused { port: 0, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_get_an_error_line() {
    let Some(a) = start_agent() else { return };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"husk-forward 0 0\n".to_vec(), "not a TCP port"),
        (b"husk-forward 0 70000\n".to_vec(), "not a TCP port"),
        (b"husk-forward 0 abc\n".to_vec(), "not a TCP port"),
        (b"husk-forward 0 -1\n".to_vec(), "not a TCP port"),
        (b"husk-forward 7 80\n".to_vec(), "unsupported version"),
        (
            b"GET / HTTP/1.1\n".to_vec(),
            "expected `husk-forward 0 PORT`",
        ),
        (vec![b'9'; 300], "longer than"),
        (b"husk-forward 0 \xff\n".to_vec(), "not UTF-8"),
        (b"husk-forward 0 80".to_vec(), "closed before"),
    ];
    for (header, want) in cases {
        let mut s = UnixStream::connect(forward::unix_path(&a.sock))
            .await
            .unwrap();
        s.write_all(&header).await.unwrap();
        if !header.ends_with(b"\n") && header.len() < 100 {
            // An unfinished header: the host's half-close ends it.
            s.shutdown().await.unwrap();
        }
        let line = tokio::time::timeout(
            Duration::from_secs(15),
            husk_agent_protocol::stdio::read_line(&mut s, 1024),
        )
        .await
        .expect("an answer, not a hang")
        .unwrap();
        let line = String::from_utf8(line).unwrap();
        let shown = String::from_utf8_lossy(&header);
        assert!(line.starts_with("error header: "), "{shown:?}: {line}");
        assert!(line.contains(want), "{shown:?}: {line}");
        assert!(line.len() <= forward::MAX_ANSWER, "{shown:?}: {line}");
    }
    // A port where nothing listens, through a raw header too.
    let port = closed_port();
    let line = raw_answer(&a, format!("husk-forward 0 {port}\n").as_bytes()).await;
    assert!(
        line.starts_with(&format!("error connect to 127.0.0.1:{port}: ")),
        "{line}"
    );
}
