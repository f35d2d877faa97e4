//! A bus routes vCPU exits to the device that owns an address: one for port I/O (IN/OUT
//! exits, ports widened to u64) and one for MMIO.
//!
//! Reads of addresses nobody owns return zeros (the guest probes many legacy ports; CMOS
//! and PCI configuration probes must simply find nothing); writes to them are dropped.

use std::sync::{Arc, Mutex};

use super::ExitReason;

/// A device on a bus.
pub trait BusDevice: Send {
    /// Fills `data` for a read of `base + offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write to `base + offset`; may ask for the VM to stop.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason>;
}

struct Range {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Address ranges and their devices. Built before the vCPUs start, then shared read-only.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<_> = self.ranges.iter().map(|r| (r.base, r.len)).collect();
        f.debug_struct("Bus").field("ranges", &r).finish()
    }
}

/// Why a device could not be put on the bus.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` at `base..base+len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let overlap = BusError::Overlap { base, len };
        let end = base.checked_add(len).ok_or(overlap.clone())?;
        if len == 0
            || self
                .ranges
                .iter()
                .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(overlap);
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Range, u64)> {
        self.ranges
            .iter()
            .find(|r| addr >= r.base && addr - r.base < r.len)
            .map(|r| (r, addr - r.base))
    }

    /// A read of `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((r, offset)) => lock(&r.device).read(offset, data),
            None => data.fill(0),
        }
    }

    /// A write to `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<ExitReason> {
        let (r, offset) = self.find(addr)?;
        lock(&r.device).write(offset, data)
    }
}

/// Locks a device; a device whose holder panicked is still used (its state is plain data).
fn lock(d: &Mutex<dyn BusDevice>) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, u8)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
            self.0.push((offset, data[0]));
            (data[0] == 0xff).then_some(ExitReason::Reset)
        }
    }

    #[test]
    fn routes_by_port_and_ignores_unowned_ports() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [9u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b, [2]);
        bus.read(0x70, &mut b);
        assert_eq!(b, [0]);
        assert_eq!(bus.write(0x3f8, &[1]), None);
        assert_eq!(bus.write(0x3ff, &[0xff]), Some(ExitReason::Reset));
        assert_eq!(bus.write(0x400, &[0xff]), None);
        assert_eq!(dev.lock().unwrap().0, vec![(0, 1), (7, 0xff)]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        let e = bus.insert(0x5f, 2, Arc::new(Mutex::new(Echo(vec![]))));
        assert_eq!(e, Err(BusError::Overlap { base: 0x5f, len: 2 }));
        bus.insert(0xfff0, 0x10, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
    }
}
