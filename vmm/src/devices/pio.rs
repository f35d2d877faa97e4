//! The port-I/O bus: routes vCPU IN/OUT exits to the device that owns the port.
//!
//! Reads of ports nobody owns return zeros (the guest probes many legacy ports; CMOS
//! and PCI configuration probes must simply find nothing); writes to them are dropped.

use std::sync::{Arc, Mutex};

use super::ExitReason;

/// A device on the port-I/O bus.
pub trait PioDevice: Send {
    /// Fills `data` for an IN from `base + offset`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handles an OUT to `base + offset`; may ask for the VM to stop.
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<ExitReason>;
}

struct Range {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

/// Port ranges and their devices. Built before the vCPUs start, then shared read-only.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r: Vec<_> = self.ranges.iter().map(|r| (r.base, r.len)).collect();
        f.debug_struct("PioBus").field("ranges", &r).finish()
    }
}

/// Why a device could not be put on the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PioError {
    #[error("ports {base:#x}+{len} overlap a device already on the bus")]
    Overlap { base: u16, len: u16 },
}

impl PioBus {
    pub fn new() -> PioBus {
        PioBus::default()
    }

    /// Puts `device` at ports `base..base+len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), PioError> {
        let end = u32::from(base) + u32::from(len);
        if self.ranges.iter().any(|r| {
            u32::from(base) < u32::from(r.base) + u32::from(r.len) && u32::from(r.base) < end
        }) {
            return Err(PioError::Overlap { base, len });
        }
        self.ranges.push(Range { base, len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&Range, u16)> {
        self.ranges
            .iter()
            .find(|r| port >= r.base && u32::from(port) < u32::from(r.base) + u32::from(r.len))
            .map(|r| (r, port - r.base))
    }

    /// An IN from `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((r, offset)) => lock(&r.device).read(offset, data),
            None => data.fill(0),
        }
    }

    /// An OUT to `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<ExitReason> {
        let (r, offset) = self.find(port)?;
        lock(&r.device).write(offset, data)
    }
}

/// Locks a device; a device whose holder panicked is still used (its state is plain data).
fn lock(d: &Mutex<dyn PioDevice>) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, u8)>);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> Option<ExitReason> {
            self.0.push((offset, data[0]));
            (data[0] == 0xff).then_some(ExitReason::Reset)
        }
    }

    #[test]
    fn routes_by_port_and_ignores_unowned_ports() {
        let mut bus = PioBus::new();
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
        let mut bus = PioBus::new();
        bus.insert(0x60, 1, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
        let e = bus.insert(0x5f, 2, Arc::new(Mutex::new(Echo(vec![]))));
        assert_eq!(e, Err(PioError::Overlap { base: 0x5f, len: 2 }));
        bus.insert(0xfff0, 0x10, Arc::new(Mutex::new(Echo(vec![]))))
            .unwrap();
    }
}
