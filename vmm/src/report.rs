//! The exit report (`husk-vmm --report FILE`): why the VM stopped and what it cost, as
//! JSON, for the runtime and for benchmarks.
//!
//! Memory: the process's peak resident set (VmHWM) includes the guest pages the guest
//! touched, which live in the guest memory mappings; their resident size is read from
//! /proc/self/smaps at exit. The difference is the VMM's own overhead.

use std::path::Path;

use serde::Serialize;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::devices::ExitReason;

/// What `--report` writes.
#[derive(Debug, Serialize)]
pub struct Report {
    /// "poweroff", "reset", "crash", "host_error" or "stopped".
    pub exit: &'static str,
    pub detail: Option<String>,
    /// Milliseconds from process start to the guest's stop.
    pub run_ms: u128,
    /// Peak resident set of the whole process, KiB.
    pub peak_rss_kib: u64,
    /// Resident guest memory at exit, KiB.
    pub guest_rss_kib: u64,
    /// peak_rss_kib - guest_rss_kib: the VMM's own footprint.
    pub vmm_overhead_kib: u64,
    /// Counters per virtio device.
    pub devices: serde_json::Value,
}

impl Report {
    pub fn new(
        reason: &ExitReason,
        run_ms: u128,
        mem: Option<&GuestMemoryMmap>,
        devices: serde_json::Value,
    ) -> Report {
        let (exit, detail) = match reason {
            ExitReason::Poweroff => ("poweroff", None),
            ExitReason::Reset => ("reset", None),
            ExitReason::Crash(s) => ("crash", Some(s.clone())),
            ExitReason::HostError(s) => ("host_error", Some(s.clone())),
            ExitReason::Stopped(s) => ("stopped", Some(s.clone())),
        };
        let peak_rss_kib = status_kib("VmHWM").unwrap_or(0);
        let guest_rss_kib = mem.map_or(0, guest_rss_kib);
        Report {
            exit,
            detail,
            run_ms,
            peak_rss_kib,
            guest_rss_kib,
            vmm_overhead_kib: peak_rss_kib.saturating_sub(guest_rss_kib),
            devices,
        }
    }

    /// Writes the report as JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }
}

/// A "Name:   1234 kB" line of /proc/self/status.
fn status_kib(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&text, name)
}

fn parse_kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The resident size of the guest memory mappings, from /proc/self/smaps.
fn guest_rss_kib(mem: &GuestMemoryMmap) -> u64 {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let ranges: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            (start, start + r.len())
        })
        .collect();
    sum_rss_in(&smaps, &ranges)
}

/// Sums the Rss of the smaps entries whose address range lies inside one of `ranges`.
fn sum_rss_in(smaps: &str, ranges: &[(u64, u64)]) -> u64 {
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            inside = ranges.iter().any(|(s, e)| a >= *s && b <= *e);
            continue;
        }
        if inside && let Some(kib) = parse_kib_field(line, "Rss") {
            total += kib;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_entries_inside_the_guest_ranges_are_summed() {
        let smaps = "\
1000-2000 rw-s 00000000 00:01 1 /memfd:husk-guest-ram (deleted)
Size:                  4 kB
Rss:                   4 kB
3000-5000 rw-p 00000000 00:00 0
Rss:                   8 kB
7000-8000 rw-s 00000000 00:01 1 /memfd:husk-guest-ram (deleted)
Rss:                   2 kB
";
        assert_eq!(sum_rss_in(smaps, &[(0x1000, 0x2000), (0x6000, 0x9000)]), 6);
        assert_eq!(parse_kib_field("VmHWM:\t  1234 kB\n", "VmHWM"), Some(1234));
    }

    #[test]
    fn report_of_this_process() {
        let mem = crate::memory::create_guest_memory(4, false).unwrap();
        let r = Report::new(&ExitReason::Poweroff, 5, Some(&mem), serde_json::json!({}));
        assert_eq!(r.exit, "poweroff");
        assert!(r.peak_rss_kib > 0);
        assert!(r.vmm_overhead_kib <= r.peak_rss_kib);
    }
}
