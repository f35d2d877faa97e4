//! Guest output on the user's terminal: a container without a terminal of its own has
//! no business driving ours, so its output is stripped of control sequences before it
//! reaches a terminal (escape sequences: CSI, OSC, DCS and the rest; C0 controls but
//! tab, newline and carriage return; C1 controls as UTF-8). Output to a file or a pipe
//! is passed as it is, and a container with `-t` gets its terminal untouched.
//!
//! Also: output drained for a bounded time once the container's process has exited,
//! so a stream kept open (a background process holding stdout) cannot hang husk.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long output may keep coming once the process it belongs to has exited.
pub const DRAIN: Duration = Duration::from_secs(3);

/// Longest string sequence (OSC, DCS, …) swallowed before giving up on its end.
const MAX_STRING: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// After ESC.
    Esc,
    /// In a CSI sequence (ESC [ … final byte).
    Csi,
    /// In a string sequence (OSC, DCS, SOS, PM, APC), ended by BEL or ESC \.
    Str(usize),
    /// In a string sequence, after ESC.
    StrEsc(usize),
    /// After 0xC2 (the first byte of U+0080–U+00BF in UTF-8).
    C2,
}

/// A streaming filter: feed it chunks; it keeps state across them.
#[derive(Debug, Clone)]
pub struct Sanitizer {
    state: State,
}

impl Default for Sanitizer {
    fn default() -> Self {
        Sanitizer {
            state: State::Normal,
        }
    }
}

impl Sanitizer {
    /// Appends what of `input` may reach a terminal to `out`.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match self.state {
                State::Normal => match b {
                    0x1b => State::Esc,
                    b'\t' | b'\n' | b'\r' => {
                        out.push(b);
                        State::Normal
                    }
                    0x00..=0x1f | 0x7f => State::Normal,
                    0xc2 => State::C2,
                    _ => {
                        out.push(b);
                        State::Normal
                    }
                },
                State::Esc => match b {
                    b'[' => State::Csi,
                    b']' | b'P' | b'X' | b'^' | b'_' => State::Str(0),
                    _ => State::Normal,
                },
                State::Csi => match b {
                    0x40..=0x7e => State::Normal,
                    _ => State::Csi,
                },
                State::Str(n) => match b {
                    0x07 => State::Normal,
                    0x1b => State::StrEsc(n),
                    _ if n >= MAX_STRING => State::Normal,
                    _ => State::Str(n + 1),
                },
                State::StrEsc(n) => match b {
                    b'\\' => State::Normal,
                    _ => State::Str(n + 1),
                },
                State::C2 => match b {
                    // C1 controls (U+0080–U+009F): dropped with their lead byte.
                    0x80..=0x9f => State::Normal,
                    _ => {
                        out.push(0xc2);
                        // The byte after a lone C2 is looked at afresh.
                        let mut rest = Sanitizer::default();
                        rest.filter(&[b], out);
                        rest.state
                    }
                },
            };
        }
    }
}

/// Copies `r` to `w`, through a [`Sanitizer`] when `sanitize`.
///
/// `r` is read to its end whatever happens to `w`: output that cannot be written (a
/// full disk under a log file, a logger or a reader that went away) is dropped,
/// counted and reported, and each later chunk is tried again (the disk may get space
/// back). Stopping the reads instead would fill the stream's buffers and block the
/// container's writes: a host-side failure must not hang the guest's process. (A
/// file's write error comes back from tokio at the next flush, so each chunk is
/// flushed and a failed flush counts as the chunk dropped.)
pub async fn copy<R, W>(r: R, w: W, sanitize: bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    copy_counting(r, w, sanitize).await;
}

/// [`copy`], returning the bytes dropped.
async fn copy_counting<R, W>(mut r: R, mut w: W, sanitize: bool) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut s = Sanitizer::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut clean = Vec::with_capacity(64 << 10);
    // Bytes dropped in all, and since the last chunk written.
    let (mut dropped, mut lately) = (0u64, 0u64);
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = if sanitize {
            clean.clear();
            s.filter(&buf[..n], &mut clean);
            &clean[..]
        } else {
            &buf[..n]
        };
        // Flushed each time: interactive output shows as it comes, and a file's
        // write error surfaces here.
        let wrote = match w.write_all(chunk).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        match wrote {
            Ok(()) if lately > 0 => {
                tracing::warn!(
                    dropped = lately,
                    "output written again; bytes were lost before"
                );
                lately = 0;
            }
            Ok(()) => {}
            Err(e) => {
                if lately == 0 {
                    tracing::warn!(error = %e, "cannot write the output; dropping it until it can be written");
                }
                lately = lately.saturating_add(chunk.len() as u64);
                dropped = dropped.saturating_add(chunk.len() as u64);
            }
        }
    }
    if let Err(e) = w.flush().await {
        tracing::warn!(error = %e, "the output's last bytes could not be written");
    }
    if dropped > 0 {
        tracing::warn!(dropped, "output lost: it could not be written");
    }
    dropped
}

/// Waits for an output pump for at most [`DRAIN`], then stops it.
pub async fn drain(pump: tokio::task::JoinHandle<()>) {
    let abort = pump.abort_handle();
    if tokio::time::timeout(DRAIN, pump).await.is_err() {
        abort.abort();
        tracing::debug!("output still open {DRAIN:?} after the process exited: stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Sanitizer::default();
        let mut out = Vec::new();
        for c in chunks {
            s.filter(c, &mut out);
        }
        out
    }

    #[test]
    fn plain_text_and_utf8_pass() {
        let t = "hello\tworld\r\nnaïve — 日本 ü\n".as_bytes();
        assert_eq!(clean(&[t]), t);
        // U+00A0..U+00BF start with C2 too and are kept.
        assert_eq!(
            clean(&["a\u{a0}b\u{bf}".as_bytes()]),
            "a\u{a0}b\u{bf}".as_bytes()
        );
    }

    #[test]
    fn escape_sequences_go() {
        // Colour, cursor movement, a window title (OSC, BEL and ST ends), DCS, a
        // two-byte escape, a bell, a C1 CSI (U+009B), backspace, DEL.
        let hostile = b"\x1b[31mred\x1b[0m \x1b[2J\x1b[H\x1b]0;pwned\x07t\x1b]52;c;Zm9v\x1b\\x\x1bPq#0\x1b\\y\x1bcz\x07\xc2\x9b31m!\x08\x7f.";
        assert_eq!(clean(&[hostile]), b"red txyz31m!.");
    }

    #[test]
    fn sequences_split_across_reads() {
        assert_eq!(clean(&[b"a\x1b", b"[3", b"1mb\xc2", b"\x9bc"]), b"abc");
        assert_eq!(clean(&[b"x\xc2", b"\xa0y"]), "x\u{a0}y".as_bytes());
    }

    #[test]
    fn an_unterminated_string_ends() {
        let mut input = b"\x1b]".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_STRING + 10));
        assert_eq!(clean(&[&input]).len(), 9);
    }

    /// A writer that fails (EPIPE) while `fail` is above zero, counting it down, then
    /// keeps what it gets.
    struct FailThenKeep {
        fail: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        got: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for FailThenKeep {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.fail.load(SeqCst) > 0 {
                self.fail.fetch_sub(1, SeqCst);
                return std::task::Poll::Ready(Err(std::io::Error::from_raw_os_error(libc::EPIPE)));
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_full_disk_drops_output_counted_and_never_blocks_the_writer() {
        // The real thing: /dev/full fails every write with ENOSPC (tokio reports a
        // file's write error at the next flush). 256 KiB through a small stream: the
        // writer side finishes, and every byte is counted as dropped.
        let full = tokio::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .await
            .unwrap();
        let (mut tx, rx) = tokio::io::duplex(4096);
        let pump = tokio::spawn(copy_counting(rx, full, false));
        let writer = tokio::spawn(async move {
            for _ in 0..64 {
                tx.write_all(&[b'x'; 4096]).await.unwrap();
            }
        });
        tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("the container's writes blocked")
            .unwrap();
        let dropped = tokio::time::timeout(Duration::from_secs(20), pump)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dropped, 64 * 4096);
    }

    #[tokio::test]
    async fn output_is_read_on_past_a_failing_writer_and_written_again_later() {
        use std::sync::atomic::Ordering::SeqCst;
        let fail = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let got = std::sync::Arc::default();
        let out = FailThenKeep {
            fail: fail.clone(),
            got: std::sync::Arc::clone(&got),
        };
        let (mut tx, rx) = tokio::io::duplex(64);
        let pump = tokio::spawn(copy_counting(rx, out, false));
        tx.write_all(b"lost").await.unwrap();
        // Once that write has failed, the next chunk is written.
        while fail.load(SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.write_all(b"kept").await.unwrap();
        drop(tx);
        assert_eq!(pump.await.unwrap(), 4);
        assert_eq!(&*got.lock().unwrap(), b"kept");
    }

    #[tokio::test]
    async fn a_stream_that_never_closes_is_stopped() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"out\n").await.unwrap();
        let (sink, mut sink_rx) = tokio::io::duplex(64);
        let pump = tokio::spawn(copy(rx, sink, false));
        let t0 = std::time::Instant::now();
        drain(pump).await;
        assert!(t0.elapsed() < DRAIN + Duration::from_secs(1));
        let mut got = vec![0u8; 4];
        sink_rx.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"out\n");
        drop(tx);
    }
}
