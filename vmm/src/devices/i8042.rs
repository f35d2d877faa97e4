//! The i8042 keyboard controller, reduced to what a guest uses to reset the machine:
//! command 0xFE ("pulse the reset line") on port 0x64 ends the VM. Status reads say
//! "no data" so that a probing driver finds nothing to wait for.

use super::ExitReason;
use super::bus::BusDevice;

/// The reset command.
const CMD_RESET: u8 = 0xfe;
/// Offset of the command/status port (0x64) from the data port (0x60).
const CMD_OFFSET: u64 = 4;

/// Sits at ports 0x60..=0x64.
#[derive(Debug, Default)]
pub struct I8042;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        (offset == CMD_OFFSET && data.first() == Some(&CMD_RESET)).then_some(ExitReason::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_on_the_command_port_resets() {
        let mut d = I8042;
        assert_eq!(d.write(CMD_OFFSET, &[CMD_RESET]), Some(ExitReason::Reset));
        assert_eq!(d.write(0, &[CMD_RESET]), None);
        assert_eq!(d.write(CMD_OFFSET, &[0xad]), None);
        assert_eq!(d.write(CMD_OFFSET, &[]), None);
        let mut b = [0xffu8];
        d.read(CMD_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }
}
