//! MSI-X as a guest sees it (PCI Local Bus 3.0, 6.8.2): the capability in config space and
//! the vector table, kept in the VMM for the emulated device (one vector, table and PBA in
//! BAR0) and for a VFIO device (the device's table size and BIR; vfio-pci programs the real
//! table on VFIO_DEVICE_SET_IRQS, the guest's entries only say where KVM routes the eventfd).
//! Vector 0 is the one routed (one interrupt source per device in this VMM); every entry
//! keeps what the guest wrote. Pure: the device decides, the bus routes.

use super::config::{extract, merge};
use super::msi::{msi_change, MsiChange, MsiMessage};

/// Capability ID of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Where the emulated device's MSI-X capability sits (after MSI at 0x50).
pub const MSIX_CAP_OFFSET: u16 = 0x60;
/// The emulated device's vector table and pending-bit array, in BAR0 (BIR 0).
pub const TABLE_OFFSET: u64 = 0x800;
pub const PBA_OFFSET: u64 = 0x900;
/// The emulated device's vectors: one is enough for one interrupt source.
pub const VECTORS: usize = 1;
/// Bytes of config space the capability occupies.
const CAP_LEN: u16 = 12;
const ENTRY_LEN: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;
/// The spec's largest table (2048 vectors).
const MAX_VECTORS: usize = 2048;

/// The capability and its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msix {
    /// Where the capability sits in config space.
    pub offset: u16,
    /// ID, next pointer and control with the table size (read-only).
    header: u32,
    /// Table offset / BIR and PBA offset / BIR (read-only).
    table: u32,
    pba: u32,
    /// The guest's enable and function-mask bits.
    control: u16,
    /// Address low, address high, data, vector control; vectors start masked (6.8.2.9).
    entries: Vec<[u32; 4]>,
    /// Vector 0 raised while masked (the emulated device's PBA; a VFIO device has its own).
    pending: bool,
}

impl Msix {
    /// From the capability's three dwords read at `offset` of a device's config space.
    pub fn new(offset: u16, header: u32, table: u32, pba: u32) -> Self {
        let size = (((header >> 16) & 0x7ff) as usize + 1).min(MAX_VECTORS);
        Self {
            offset,
            header: header & 0x07ff_ffff,
            table,
            pba,
            control: 0,
            entries: vec![[0, 0, 0, VECTOR_MASKED]; size],
            pending: false,
        }
    }

    /// The emulated device's: `VECTORS` vectors, table and PBA in BAR0.
    pub fn emulated(next: u8) -> Self {
        let header =
            u32::from(CAP_ID_MSIX) | (u32::from(next) << 8) | (((VECTORS - 1) as u32) << 16);
        Self::new(
            MSIX_CAP_OFFSET,
            header,
            TABLE_OFFSET as u32,
            PBA_OFFSET as u32,
        )
    }

    /// The offset inside the capability, for a config access at `offset` it owns.
    pub fn inside(&self, offset: u16) -> Option<u16> {
        let rel = offset.checked_sub(self.offset)?;
        (rel < CAP_LEN).then_some(rel)
    }

    /// Dword `rel / 4` of the capability as the guest sees it.
    pub fn read(&self, rel: u16) -> u32 {
        match rel / 4 {
            0 => self.header | (u32::from(self.control) << 16),
            1 => self.table,
            _ => self.pba,
        }
    }

    /// A guest write into the capability: only the enable and function-mask bits are
    /// writable (6.8.2.3).
    pub fn write(&mut self, rel: u16, size: u8, value: u32) -> MsiChange {
        if rel / 4 != 0 {
            return MsiChange::None;
        }
        let before = self.enabled();
        let merged = merge(self.read(0), rel, size, value);
        self.control = ((merged >> 16) as u16) & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        msi_change(before, self.enabled())
    }

    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// The BAR holding the vector table.
    pub fn table_bar(&self) -> usize {
        (self.table & 7) as usize
    }

    fn table_start(&self) -> u64 {
        u64::from(self.table & !7)
    }

    /// Whether an access at `offset` of `bar` falls in the vector table.
    pub fn owns(&self, bar: usize, offset: u64) -> bool {
        let start = self.table_start();
        bar == self.table_bar()
            && offset >= start
            && offset < start + self.entries.len() as u64 * ENTRY_LEN
    }

    /// Whether an access at `offset` of `bar` falls in the first dword pair of the PBA.
    pub fn owns_pba(&self, bar: usize, offset: u64) -> bool {
        let start = u64::from(self.pba & !7);
        bar == (self.pba & 7) as usize && (start..start + 8).contains(&offset)
    }

    /// The emulated PBA: bit 0 is vector 0's pending bit.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        let start = u64::from(self.pba & !7);
        let value = u32::from(offset & !3 == start && self.pending);
        put(extract(value, (offset & 3) as u16, data.len() as u8), data);
    }

    /// The entry, field and byte of the table at `offset` (in the table's BAR).
    fn slot(&self, offset: u64) -> Option<(usize, usize, u16)> {
        let rel = offset.checked_sub(self.table_start())?;
        let entry = usize::try_from(rel / ENTRY_LEN).ok()?;
        let field = ((rel % ENTRY_LEN) / 4) as usize;
        (entry < self.entries.len()).then_some((entry, field, (rel % 4) as u16))
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let Some((entry, field, byte)) = self.slot(offset) else {
            data.fill(0xff);
            return;
        };
        put(
            extract(self.entries[entry][field], byte, data.len() as u8),
            data,
        );
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let Some((entry, field, byte)) = self.slot(offset) else {
            return;
        };
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let old = self.entries[entry][field];
        self.entries[entry][field] = merge(old, byte, n as u8, u32::from_le_bytes(bytes));
    }

    fn deliverable(&self) -> bool {
        let vector_masked = self
            .entries
            .first()
            .is_none_or(|e| e[3] & VECTOR_MASKED != 0);
        self.enabled() && self.control & CONTROL_FUNCTION_MASK == 0 && !vector_masked
    }

    /// Where vector 0 goes now (`None` while disabled or masked).
    pub fn message(&self) -> Option<MsiMessage> {
        let [lo, hi, data, _] = *self.entries.first()?;
        self.deliverable().then_some(MsiMessage {
            address: u64::from(hi) << 32 | u64::from(lo),
            data,
        })
    }

    /// An interrupt of vector 0: `true` if it goes out now, else it is left pending.
    pub fn raise(&mut self) -> bool {
        let now = self.deliverable();
        self.pending = !now;
        now
    }
}

fn put(value: u32, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(i).copied().unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dword(m: &Msix, offset: u64) -> u32 {
        let mut buf = [0u8; 4];
        if m.owns_pba(0, offset) {
            m.pba_read(offset, &mut buf);
        } else {
            m.table_read(offset, &mut buf);
        }
        u32::from_le_bytes(buf)
    }

    #[test]
    fn the_emulated_capability_points_at_table_and_pba_in_bar0() {
        let m = Msix::emulated(0);
        assert_eq!(m.read(0) & 0xff, u32::from(CAP_ID_MSIX));
        assert_eq!(m.read(0) >> 16, 0, "table size 1 (N-1 = 0), disabled");
        assert_eq!(m.read(4), 0x800, "offset 0x800, BIR 0");
        assert_eq!(m.read(8), 0x900);
        assert!(m.owns(0, TABLE_OFFSET) && m.owns(0, TABLE_OFFSET + 12));
        assert!(!m.owns(0, TABLE_OFFSET + 16) && !m.owns(1, TABLE_OFFSET));
        assert!(m.owns_pba(0, PBA_OFFSET) && m.owns_pba(0, PBA_OFFSET + 4));
        assert!(!m.owns_pba(0, PBA_OFFSET + 8) && !m.owns_pba(0, 0));
    }

    #[test]
    fn a_vector_sends_only_when_enabled_unmasked_and_not_function_masked() {
        let mut m = Msix::emulated(0);
        m.table_write(TABLE_OFFSET, &0xfee0_0000u32.to_le_bytes());
        m.table_write(TABLE_OFFSET + 8, &0x41u32.to_le_bytes());
        assert_eq!(m.write(2, 2, 0x8000), MsiChange::Enable);
        assert!(m.enabled());
        assert_eq!(m.message(), None, "vector still masked");
        assert!(!m.raise());
        assert_eq!(dword(&m, PBA_OFFSET), 1, "pending while masked");
        m.table_write(TABLE_OFFSET + 12, &0u32.to_le_bytes());
        let want = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(m.message(), Some(want));
        assert!(m.raise());
        assert_eq!(dword(&m, PBA_OFFSET), 0);
        m.write(2, 2, 0xc000);
        assert_eq!(m.message(), None, "function masked");
        // Table size is read-only.
        m.write(2, 2, 0x87ff);
        assert_eq!(m.read(0) >> 16, 0x8000);
    }

    #[test]
    fn a_device_capability_is_virtual_and_routes_vector_zero() {
        // 8 vectors; table at BAR 2 + 0x2000, PBA at BAR 2 + 0x3000.
        let mut m = Msix::new(0x70, 0x0007_8011, 0x2002, 0x3002);
        assert_eq!(m.read(0) & 0xffff, 0x8011);
        assert_eq!((m.read(0) >> 16) & 0x7ff, 7);
        assert_eq!((m.read(4), m.read(8)), (0x2002, 0x3002));
        assert_eq!(m.table_bar(), 2);
        assert!(m.owns(2, 0x2000) && m.owns(2, 0x207c));
        assert!(!m.owns(2, 0x2080) && !m.owns(1, 0x2000) && !m.owns(2, 0x1ffc));
        // Vectors start masked; nothing routes until enabled and unmasked.
        assert_eq!(dword(&m, 0x200c), 1);
        m.table_write(0x2000, &0xfee0_1000u32.to_le_bytes());
        m.table_write(0x2004, &0u32.to_le_bytes());
        m.table_write(0x2008, &0x41u32.to_le_bytes());
        assert_eq!(m.message(), None);
        // Only the enable and function-mask bits are writable; the table size stays.
        assert_eq!(m.write(2, 2, 0xffff), MsiChange::Enable);
        assert_eq!((m.read(0) >> 16) & 0x7ff, 7);
        assert_eq!(m.message(), None, "function masked");
        assert_eq!(m.write(2, 2, 0x8000), MsiChange::None);
        assert_eq!(m.message(), None, "vector 0 masked");
        m.table_write(0x200c, &0u32.to_le_bytes());
        let want = MsiMessage {
            address: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(m.message(), Some(want));
        // The guest reads back what it wrote, byte by byte too.
        let mut b = [0u8; 1];
        m.table_read(0x2009, &mut b);
        assert_eq!(b[0], 0);
        m.table_read(0x2008, &mut b);
        assert_eq!(b[0], 0x41);
        assert_eq!(m.write(2, 2, 0), MsiChange::Disable);
        assert_eq!(m.message(), None);
        // Writes to the table/PBA dwords change nothing.
        assert_eq!(m.write(4, 4, 0xdead_beef), MsiChange::None);
        assert_eq!(m.read(4), 0x2002);
        assert_eq!(m.inside(0x70), Some(0));
        assert_eq!(m.inside(0x7c), None);
        assert_eq!(m.inside(0x6c), None);
    }

    #[test]
    fn table_size_is_bounded_by_the_spec() {
        let m = Msix::new(0x40, 0xffff_0011, 0, 0);
        assert!(m.owns(0, (MAX_VECTORS as u64 - 1) * 16));
        assert!(!m.owns(0, MAX_VECTORS as u64 * 16));
    }
}
