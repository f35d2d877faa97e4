//! CRI's streaming calls as a kubelet client uses them: PortForward and Attach hand out
//! a URL on containerd's streaming server; a websocket to it (subprotocol
//! `v4.channel.k8s.io`) carries binary messages whose first byte is the channel.
//! PortForward: channel 0 data, 1 error, and each channel's first message is the port,
//! 2 bytes little-endian. Attach: 0 stdin, 1 stdout, 2 stderr, 3 error.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// Opens the websocket at `url` (`http://HOST:PORT/...` from the RPC).
fn connect(url: &str) -> Result<WebSocket<TcpStream>, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: expected an http:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default().to_string();
    let tcp = TcpStream::connect(&host).map_err(|e| format!("connect {host}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("ws://{rest}")
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().map_err(|e| format!("{e}"))?,
    );
    let (ws, _) =
        tungstenite::client::client(req, tcp).map_err(|e| format!("handshake {url}: {e}"))?;
    Ok(ws)
}

/// Whether a read error is the 5 s read timeout (nothing came).
fn quiet(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
}

/// Attach: writes `input` on stdin and reads stdout until it holds `want` (≤ 60 s).
pub fn attach(url: &str, input: &[u8], want: &str) -> Result<String, String> {
    let mut ws = connect(url)?;
    let mut m = vec![0u8];
    m.extend_from_slice(input);
    ws.send(Message::Binary(m.into()))
        .map_err(|e| format!("send: {e}"))?;
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && !String::from_utf8_lossy(&out).contains(want) {
        match ws.read() {
            Ok(Message::Binary(b)) if b.first() == Some(&1) => out.extend_from_slice(&b[1..]),
            Ok(Message::Binary(b)) if b.first() == Some(&3) && b.len() > 1 => {
                return Err(format!(
                    "error channel: {}",
                    String::from_utf8_lossy(&b[1..])
                ));
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) if quiet(&e) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let _ = ws.close(None);
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// PortForward: sends `request` to `port` and returns what came back on the data
/// channel (the port prefix removed), or the error channel's text.
pub fn port_forward(url: &str, port: u16, request: &[u8]) -> Result<String, String> {
    let mut ws = connect(&format!("{url}?port={port}"))?;
    let mut data = Vec::new();
    let mut error = Vec::new();
    let mut seen = [false; 2];
    let mut sent = false;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        if !sent && seen[0] {
            let mut m = vec![0u8];
            m.extend_from_slice(request);
            ws.send(Message::Binary(m.into()))
                .map_err(|e| format!("send: {e}"))?;
            sent = true;
        }
        match ws.read() {
            Ok(Message::Binary(b)) if !b.is_empty() => {
                let ch = usize::from(b[0]).min(2);
                let body = &b[1..];
                if ch < 2 && !seen[ch] {
                    // The port prefix.
                    seen[ch] = true;
                    if body != port.to_le_bytes() {
                        return Err(format!("channel {ch} began with {body:?}, not the port"));
                    }
                    continue;
                }
                match ch {
                    0 => data.extend_from_slice(body),
                    _ => error.extend_from_slice(body),
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(e) if quiet(&e) => {
                // Nothing for 5 s after the reply: the exchange is over.
                if sent && !data.is_empty() {
                    break;
                }
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let _ = ws.close(None);
    if !error.is_empty() {
        return Err(format!(
            "error channel: {}",
            String::from_utf8_lossy(&error)
        ));
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}
