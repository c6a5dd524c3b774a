//! MSI-X as the emulated device offers it (PCI Local Bus 3.0, 6.8.2): the capability in config
//! space and the vector table in BAR0. Pure: the device decides, the bus routes.

use super::pci::{merge, MsiMessage};

/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Where the emulated device's MSI-X capability sits (after MSI at 0x50).
pub const MSIX_CAP_OFFSET: u16 = 0x60;
/// The vector table and the pending-bit array, in BAR0 (BIR 0).
pub const TABLE_OFFSET: u64 = 0x800;
pub const PBA_OFFSET: u64 = 0x900;
/// One vector is enough for one interrupt source.
pub const VECTORS: usize = 1;
const ENTRY_LEN: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

/// The capability and its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msix {
    next: u8,
    control: u16,
    table: [Entry; VECTORS],
    pending: bool,
}

impl Msix {
    pub fn new(next: u8) -> Self {
        Self {
            next,
            control: (VECTORS - 1) as u16,
            // Vectors start masked (6.8.2.9).
            table: [Entry {
                address_lo: 0,
                address_hi: 0,
                data: 0,
                control: VECTOR_MASKED,
            }; VECTORS],
            pending: false,
        }
    }

    /// Bytes of config space the capability occupies.
    pub const LEN: u16 = 12;

    /// Dword `index` of the capability: header and control, table offset/BIR, PBA offset/BIR.
    pub fn cap_dword(&self, index: usize) -> u32 {
        match index {
            0 => {
                u32::from(CAP_ID_MSIX)
                    | (u32::from(self.next) << 8)
                    | (u32::from(self.control) << 16)
            }
            1 => TABLE_OFFSET as u32,
            2 => PBA_OFFSET as u32,
            _ => 0,
        }
    }

    /// A config write inside the capability: only enable and function mask are writable.
    pub fn cap_write(&mut self, offset: u16, size: u8, value: u32) {
        if offset / 4 != 0 {
            return;
        }
        let merged = (merge(self.cap_dword(0), offset, size, value) >> 16) as u16;
        let writable = CONTROL_ENABLE | CONTROL_FUNCTION_MASK;
        self.control = (self.control & !writable) | (merged & writable);
    }

    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// Whether `offset` of BAR0 belongs to the table or the PBA.
    pub fn owns(offset: u64) -> bool {
        (TABLE_OFFSET..TABLE_OFFSET + ENTRY_LEN * VECTORS as u64).contains(&offset)
            || (PBA_OFFSET..PBA_OFFSET + 8).contains(&offset)
    }

    /// A dword read at `offset` of BAR0 (table or PBA).
    pub fn bar_read(&self, offset: u64) -> u32 {
        if offset >= PBA_OFFSET {
            return u32::from(offset == PBA_OFFSET && self.pending);
        }
        let rel = offset - TABLE_OFFSET;
        let Some(e) = self.table.get((rel / ENTRY_LEN) as usize) else {
            return 0;
        };
        match (rel % ENTRY_LEN) / 4 {
            0 => e.address_lo,
            1 => e.address_hi,
            2 => e.data,
            _ => e.control,
        }
    }

    /// A dword write at `offset` of BAR0; the PBA is read-only.
    pub fn bar_write(&mut self, offset: u64, value: u32) {
        if offset >= PBA_OFFSET {
            return;
        }
        let rel = offset - TABLE_OFFSET;
        let Some(e) = self.table.get_mut((rel / ENTRY_LEN) as usize) else {
            return;
        };
        match (rel % ENTRY_LEN) / 4 {
            0 => e.address_lo = value & !0x3,
            1 => e.address_hi = value,
            2 => e.data = value,
            _ => e.control = value & VECTOR_MASKED,
        }
    }

    fn deliverable(&self) -> bool {
        self.enabled()
            && self.control & CONTROL_FUNCTION_MASK == 0
            && self.table[0].control & VECTOR_MASKED == 0
    }

    /// The message vector 0 sends now (`None` while disabled or masked).
    pub fn message(&self) -> Option<MsiMessage> {
        self.deliverable().then(|| MsiMessage {
            address: (u64::from(self.table[0].address_hi) << 32)
                | u64::from(self.table[0].address_lo),
            data: self.table[0].data,
        })
    }

    /// An interrupt of vector 0: `true` if it goes out now, else it is left pending.
    pub fn raise(&mut self) -> bool {
        let now = self.deliverable();
        self.pending = !now;
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_points_at_table_and_pba_in_bar0() {
        let m = Msix::new(0);
        assert_eq!(m.cap_dword(0) & 0xff, u32::from(CAP_ID_MSIX));
        assert_eq!(m.cap_dword(0) >> 16, 0, "table size 1 (N-1 = 0), disabled");
        assert_eq!(m.cap_dword(1), 0x800, "offset 0x800, BIR 0");
        assert_eq!(m.cap_dword(2), 0x900);
    }

    #[test]
    fn a_vector_sends_only_when_enabled_unmasked_and_not_function_masked() {
        let mut m = Msix::new(0);
        m.bar_write(TABLE_OFFSET, 0xfee0_0000);
        m.bar_write(TABLE_OFFSET + 8, 0x41);
        m.cap_write(2, 2, 0x8000);
        assert!(m.enabled());
        assert_eq!(m.message(), None, "vector still masked");
        assert!(!m.raise());
        assert_eq!(m.bar_read(PBA_OFFSET), 1, "pending while masked");
        m.bar_write(TABLE_OFFSET + 12, 0);
        let want = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(m.message(), Some(want));
        assert!(m.raise());
        assert_eq!(m.bar_read(PBA_OFFSET), 0);
        m.cap_write(2, 2, 0xc000);
        assert_eq!(m.message(), None, "function masked");
        // Table size is read-only.
        m.cap_write(2, 2, 0x87ff);
        assert_eq!(m.cap_dword(0) >> 16, 0x8000);
    }

    #[test]
    fn table_and_pba_offsets_are_recognized() {
        assert!(Msix::owns(TABLE_OFFSET) && Msix::owns(TABLE_OFFSET + 12));
        assert!(!Msix::owns(TABLE_OFFSET + 16));
        assert!(Msix::owns(PBA_OFFSET) && !Msix::owns(0));
    }
}
