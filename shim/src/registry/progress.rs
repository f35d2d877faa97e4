//! Pull progress on stderr: a bar per blob on a terminal, one plain line per blob
//! otherwise (logs, CI), nothing when quiet.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress of one pull.
#[derive(Debug)]
pub struct Progress {
    name: String,
    quiet: bool,
    bars: Option<MultiProgress>,
}

/// One blob's bar (nothing when not on a terminal).
#[derive(Debug)]
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn set(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.set_position(n);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_with_message("done");
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // A failed blob's bar goes away instead of staying half-full.
        if let Some(b) = &self.0
            && !b.is_finished()
        {
            b.finish_and_clear();
        }
    }
}

/// `sha256:` and the first 12 hex digits, as docker shows digests.
pub fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Bytes as docker shows sizes (1000-based: kB, MB, GB).
pub fn human(n: u64) -> String {
    let f = n as f64;
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", f / 1e6),
        _ => format!("{:.2} GB", f / 1e9),
    }
}

impl Progress {
    pub fn new(name: &str, quiet: bool) -> Progress {
        let bars = (!quiet && crate::tty::stderr_is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            name: name.to_string(),
            quiet,
            bars,
        }
    }

    /// A bar for a blob of `total` bytes being fetched.
    pub fn start(&self, kind: &str, digest: &str, total: u64) -> Bar {
        Bar(self.bars.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(total));
            if let Ok(style) =
                ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
            {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_prefix(format!("{kind:6} {}", short(digest)));
            b
        }))
    }

    /// A blob is in the store (`cached`: it was already).
    pub fn done(&self, kind: &str, digest: &str, bytes: u64, cached: bool) {
        let what = if cached {
            "already present".to_string()
        } else {
            format!("pulled ({})", human(bytes))
        };
        match &self.bars {
            Some(m) if cached => {
                let _ = m.println(format!("{kind:6} {} {what}", short(digest)));
            }
            Some(_) => {}
            None => self.line(&format!("{}: {kind} {} {what}", self.name, short(digest))),
        }
    }

    /// A line of its own (unless quiet).
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bars {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("husk: {msg}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_digests() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(2_300_000), "2.3 MB");
        assert_eq!(
            short(&format!("sha256:{}", "ab".repeat(32))),
            "abababababab"
        );
    }
}
