//! COM1, a 16550A UART (vm-superio), at port 0x3f8 with IRQ 4 delivered through an
//! irqfd. Output goes to stdout, a size-capped log file ([`log`]), or nowhere.

pub mod log;

use std::io::Write;
use std::path::Path;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::ExitReason;
use super::bus::BusDevice;
use crate::config::SerialOutput;
use log::CappedLog;

/// Raises the serial IRQ by writing to an eventfd that KVM turns into an interrupt.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Why the serial device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("cannot open the serial output file {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where the bytes go; flushed at every newline.
pub struct SerialOut(Box<dyn Write + Send>);

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        if buf.contains(&b'\n') {
            self.0.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SerialOut")
    }
}

impl SerialOut {
    /// Output to any writer (tests capture the console this way).
    pub fn new(w: Box<dyn Write + Send>) -> SerialOut {
        SerialOut(w)
    }

    pub fn open(out: &SerialOutput) -> Result<SerialOut, SerialError> {
        let w: Box<dyn Write + Send> = match out {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            SerialOutput::None => Box::new(std::io::sink()),
            SerialOutput::File { path, max_bytes } => Box::new(open_log(path, *max_bytes)?),
        };
        Ok(SerialOut(w))
    }
}

fn open_log(p: &Path, max_bytes: u64) -> Result<CappedLog, SerialError> {
    CappedLog::open(p, max_bytes).map_err(|source| SerialError::Open {
        path: p.display().to_string(),
        source,
    })
}

/// The UART on the port-I/O bus.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, SerialOut>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    pub fn new(irq: EventFd, out: SerialOut) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Flushes buffered output (before the VMM exits).
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = u8::try_from(offset).map_or(0, |o| self.uart.read(o));
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if let (Ok(o), Some(v)) = (u8::try_from(offset), data.first()) {
            // A failed write to the output (a closed pipe) must not stop the guest.
            if let Err(e) = self.uart.write(o, *v) {
                tracing::debug!(error = ?e, "serial write failed");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_output() {
        let buf = Shared::default();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(evt, SerialOut(Box::new(buf.clone())));
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*buf.0.lock().unwrap(), b"hi\n");
        // Offsets past the UART's registers and empty accesses are harmless.
        s.write(300, &[1]);
        s.write(0, &[]);
        let mut d = [0u8; 2];
        s.read(5, &mut d); // line status: THR empty
        assert_ne!(d[0] & 0x20, 0);
    }

    #[test]
    fn unopenable_file_is_named() {
        let e = SerialOut::open(&SerialOutput::file("/nonexistent/dir/c.log")).err();
        assert!(e.unwrap().to_string().contains("/nonexistent/dir/c.log"));
    }
}
