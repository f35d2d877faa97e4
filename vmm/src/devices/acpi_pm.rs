//! The ACPI hardware-reduced sleep control, sleep status and reset registers
//! (ACPI 6.5, 4.8.3.7 and 4.8.3.6), three one-byte I/O ports described in the FADT.
//!
//! Sleep control: SLP_TYP in bits 2..=4, SLP_EN in bit 5. Writing SLP_EN with the sleep
//! type the DSDT's `\_S5` gives means "power off". Reset: writing the FADT's reset value.

use super::ExitReason;
use super::bus::BusDevice;
use crate::boot::acpi::S5_SLEEP_TYPE;
use crate::boot::layout::{
    ACPI_RESET_PORT, ACPI_RESET_VALUE, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};

const SLP_EN: u8 = 1 << 5;

/// Sits at the three ports from ACPI_SLEEP_CONTROL_PORT.
#[derive(Debug, Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS (bit 7) is never set; the guest never sleeps and wakes.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let v = *data.first()?;
        let port = u64::from(ACPI_SLEEP_CONTROL_PORT) + offset;
        if port == u64::from(ACPI_SLEEP_CONTROL_PORT)
            && v & SLP_EN != 0
            && (v >> 2) & 0x7 == S5_SLEEP_TYPE
        {
            Some(ExitReason::Poweroff)
        } else if port == u64::from(ACPI_RESET_PORT) && v == ACPI_RESET_VALUE {
            Some(ExitReason::Reset)
        } else {
            let _ = ACPI_SLEEP_STATUS_PORT; // writes clear status bits we never set
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_the_reset_value_resets() {
        let mut d = AcpiPm;
        let s5 = (S5_SLEEP_TYPE << 2) | SLP_EN;
        assert_eq!(d.write(0, &[s5]), Some(ExitReason::Poweroff));
        // Sleep type without SLP_EN, or another sleep state: nothing.
        assert_eq!(d.write(0, &[S5_SLEEP_TYPE << 2]), None);
        assert_eq!(d.write(0, &[(3 << 2) | SLP_EN]), None);
        let reset = u64::from(ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT);
        assert_eq!(d.write(reset, &[ACPI_RESET_VALUE]), Some(ExitReason::Reset));
        assert_eq!(d.write(reset, &[2]), None);
        assert_eq!(d.write(1, &[0xff]), None);
    }
}
