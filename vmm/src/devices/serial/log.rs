//! The console log file with a size cap: the guest decides how much it prints, and the
//! log usually lives on the host's /run (RAM), so it must never grow without bound.
//!
//! When a write would take the file past `max_bytes`, the newest half of the cap is
//! kept: those bytes move to the start of the file, which is truncated there, and the
//! write goes on from that point. The file always holds the latest output (what an
//! error message wants: its tail), one file for readers to open, and at most
//! `max_bytes`. Moving half the cap once per half cap written costs one extra copy of
//! each byte at worst. Output is buffered up to a line (or [`BUF_BYTES`]) so that the
//! UART's byte-at-a-time writes do not each become a system call.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The default cap of a console log file.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// The smallest cap accepted.
pub const MIN_MAX_BYTES: u64 = 8 << 10;
/// Bytes gathered before a write when no newline comes.
pub const BUF_BYTES: usize = 4096;

/// An append-only log of at most `max_bytes` that keeps its newest content.
#[derive(Debug)]
pub struct CappedLog {
    file: File,
    len: u64,
    max: u64,
    buf: Vec<u8>,
}

impl CappedLog {
    /// Opens (or creates) `path`, keeping what it holds; appends after it.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<CappedLog> {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .read(true)
            .truncate(false)
            .open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        let mut log = CappedLog {
            file,
            len,
            max: max_bytes.max(MIN_MAX_BYTES),
            buf: Vec::with_capacity(BUF_BYTES),
        };
        if log.len > log.max {
            log.make_room(0)?;
        }
        Ok(log)
    }

    /// The file's size now (buffered bytes not included).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the newest bytes so that `incoming` more fit within half the cap.
    fn make_room(&mut self, incoming: u64) -> io::Result<()> {
        let keep = self.len.min((self.max / 2).saturating_sub(incoming));
        if keep > 0 {
            let mut tail = vec![0u8; usize::try_from(keep).unwrap_or(0)];
            self.file.read_exact_at(&mut tail, self.len - keep)?;
            self.file.write_all_at(&tail, 0)?;
        }
        self.file.set_len(keep)?;
        self.file.seek(SeekFrom::Start(keep))?;
        self.len = keep;
        Ok(())
    }

    fn write_out(&mut self, mut data: &[u8]) -> io::Result<()> {
        let half = usize::try_from(self.max / 2).unwrap_or(usize::MAX);
        if data.len() > half {
            data = &data[data.len() - half..];
        }
        let n = data.len() as u64;
        if self.len + n > self.max {
            self.make_room(n)?;
        }
        self.file.write_all(data)?;
        self.len += n;
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BUF_BYTES || data.contains(&b'\n') {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let r = self.write_out(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gibibyte_of_output_stays_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = CappedLog::open(&path, DEFAULT_MAX_BYTES).unwrap();
        // 1 GiB of numbered 100-byte lines, 40 lines a write (byte-at-a-time writes, as
        // the UART makes them, are covered below and would make this test slow).
        let mut chunk = vec![b'x'; 4000];
        let lines: u64 = (1 << 30) / 100;
        for first in (0..lines).step_by(40) {
            let n = (lines - first).min(40) as usize;
            for k in 0..n {
                let line = &mut chunk[k * 100..(k + 1) * 100];
                line[..12].copy_from_slice(format!("{:012}", first + k as u64).as_bytes());
                line[99] = b'\n';
            }
            log.write_all(&chunk[..n * 100]).unwrap();
            assert!(log.len() <= DEFAULT_MAX_BYTES);
        }
        log.flush().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= DEFAULT_MAX_BYTES, "{size}");
        assert!(size >= DEFAULT_MAX_BYTES / 2 - 100, "{size}");
        // The newest line is the last one in the file, whole.
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.starts_with(&format!("{:012}", lines - 1)), "{last}");
    }

    #[test]
    fn bytes_one_at_a_time_and_huge_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut log = CappedLog::open(&path, MIN_MAX_BYTES).unwrap();
        for b in b"hello\n" {
            log.write_all(&[*b]).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        // One write far larger than the cap keeps only its newest half-cap.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        log.write_all(&big).unwrap();
        log.flush().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 <= MIN_MAX_BYTES);
        let half = (MIN_MAX_BYTES / 2) as usize;
        assert!(
            got.ends_with(&big[big.len() - half..]),
            "the newest bytes are kept"
        );
    }

    #[test]
    fn an_oversized_file_is_cut_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        std::fs::write(&path, vec![b'a'; 100_000]).unwrap();
        let log = CappedLog::open(&path, MIN_MAX_BYTES).unwrap();
        assert!(log.len() <= MIN_MAX_BYTES);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), log.len());
    }
}
