//! The MSI and MSI-X capabilities of a VFIO device as its guest sees them: kept in the VMM,
//! which only tells VFIO when the guest turns them on or off and KVM where the device's
//! eventfd must go.

use crate::vmm::pci::{self, MsiCap, MsiMessage};

/// The device's MSI capability as the guest sees it: where it is, and the guest's values.
/// The kernel's vfio-pci programs the real one on VFIO_DEVICE_SET_IRQS; the guest's address
/// and data only say where KVM must route the eventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualMsi {
    pub offset: u16,
    pub cap: MsiCap,
}

impl VirtualMsi {
    /// From the capability header dword read at `offset` of the device's config space.
    pub fn from_header(offset: u16, header: u32) -> Self {
        Self {
            offset,
            cap: MsiCap::from_control((header >> 8) as u8, (header >> 16) as u16),
        }
    }

    /// The offset inside the capability, for a config access at `offset` it owns.
    pub fn inside(&self, offset: u16) -> Option<u16> {
        let rel = offset.checked_sub(self.offset)?;
        (rel < self.cap.window()).then_some(rel)
    }
}

const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
const MSIX_ENTRY_LEN: u64 = 16;
/// The spec's largest table (2048 vectors).
const MSIX_MAX_VECTORS: usize = 2048;

/// A VFIO device's MSI-X capability and vector table as the guest sees them. The kernel's
/// vfio-pci programs the real table on VFIO_DEVICE_SET_IRQS; the guest's entries only say
/// where KVM must route the eventfd. Vector 0 is routed (one interrupt source per device in
/// this VMM); every entry keeps what the guest wrote, so it reads back its own values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMsix {
    /// Where the capability sits in config space.
    pub offset: u16,
    /// The device's header dword (ID, next pointer, control with the table size).
    header: u32,
    /// Table offset / BIR and PBA offset / BIR, as the device has them (read-only).
    table: u32,
    pba: u32,
    /// The guest's enable and function-mask bits.
    control: u16,
    /// Address low, address high, data, vector control; vectors start masked.
    entries: Vec<[u32; 4]>,
}

impl VirtualMsix {
    /// From the capability's three dwords read at `offset` of the device's config space.
    pub fn new(offset: u16, header: u32, table: u32, pba: u32) -> Self {
        let size = (((header >> 16) & 0x7ff) as usize + 1).min(MSIX_MAX_VECTORS);
        Self {
            offset,
            header,
            table,
            pba,
            control: 0,
            entries: vec![[0, 0, 0, 1]; size],
        }
    }

    /// The offset inside the capability, for a config access at `offset` it owns.
    pub fn inside(&self, offset: u16) -> Option<u16> {
        let rel = offset.checked_sub(self.offset)?;
        (rel < 12).then_some(rel)
    }

    /// Dword `rel / 4` of the capability as the guest sees it.
    pub fn read(&self, rel: u16) -> u32 {
        match rel / 4 {
            0 => (self.header & 0x07ff_ffff) | (u32::from(self.control) << 16),
            1 => self.table,
            _ => self.pba,
        }
    }

    /// A guest write into the capability: only the enable and function-mask bits are
    /// writable (PCI Local Bus 3.0, 6.8.2.3).
    pub fn write(&mut self, rel: u16, size: u8, value: u32) -> MsiChange {
        if rel / 4 != 0 {
            return MsiChange::None;
        }
        let before = self.enabled();
        let merged = pci::merge(self.read(0), rel, size, value);
        self.control = ((merged >> 16) as u16) & (MSIX_ENABLE | MSIX_FUNCTION_MASK);
        msi_change(before, self.enabled())
    }

    pub fn enabled(&self) -> bool {
        self.control & MSIX_ENABLE != 0
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
            && offset < start + self.entries.len() as u64 * MSIX_ENTRY_LEN
    }

    /// The dword of the table at `offset` (in the table's BAR) and the byte within it.
    fn slot(&self, offset: u64) -> Option<(usize, usize, u16)> {
        let rel = offset.checked_sub(self.table_start())?;
        let entry = usize::try_from(rel / MSIX_ENTRY_LEN).ok()?;
        let field = ((rel % MSIX_ENTRY_LEN) / 4) as usize;
        (entry < self.entries.len()).then_some((entry, field, (rel % 4) as u16))
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let Some((entry, field, byte)) = self.slot(offset) else {
            data.fill(0xff);
            return;
        };
        let value = pci::extract(self.entries[entry][field], byte, data.len() as u8);
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let Some((entry, field, byte)) = self.slot(offset) else {
            return;
        };
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let old = self.entries[entry][field];
        self.entries[entry][field] = pci::merge(old, byte, n as u8, u32::from_le_bytes(bytes));
    }

    /// Where vector 0 goes, while MSI-X is on and neither the function nor the vector is
    /// masked.
    pub fn message(&self) -> Option<MsiMessage> {
        let [lo, hi, data, control] = *self.entries.first()?;
        let open = self.enabled() && self.control & MSIX_FUNCTION_MASK == 0 && control & 1 == 0;
        open.then_some(MsiMessage {
            address: u64::from(hi) << 32 | u64::from(lo),
            data,
        })
    }
}

/// What a guest's write to the MSI enable bit asks of VFIO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiChange {
    Enable,
    Disable,
    None,
}

pub fn msi_change(before: bool, after: bool) -> MsiChange {
    match (before, after) {
        (false, true) => MsiChange::Enable,
        (true, false) => MsiChange::Disable,
        _ => MsiChange::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_msi_owns_only_its_window() {
        // A 64-bit capability at 0x68 whose next capability is at 0x78.
        let m = VirtualMsi::from_header(0x68, 0x0080_7805);
        assert_eq!(m.inside(0x68), Some(0));
        assert_eq!(m.inside(0x74), Some(0x0c));
        assert_eq!(m.inside(0x78), None);
        assert_eq!(m.inside(0x64), None);
        assert_eq!(m.cap.dword(0), 0x0080_7805);
        // 32-bit layout: data at +8, the window ends at +0xc.
        let m = VirtualMsi::from_header(0x50, 0x0000_0005);
        assert_eq!(m.inside(0x5c), None);
    }

    #[test]
    fn msix_capability_is_virtual_and_routes_vector_zero() {
        // 8 vectors; table at BAR 2 + 0x2000, PBA at BAR 2 + 0x3000.
        let mut m = VirtualMsix::new(0x70, 0x0007_8011, 0x2002, 0x3002);
        assert_eq!(m.read(0) & 0xffff, 0x8011);
        assert_eq!((m.read(0) >> 16) & 0x7ff, 7);
        assert_eq!((m.read(4), m.read(8)), (0x2002, 0x3002));
        assert_eq!(m.table_bar(), 2);
        assert!(m.owns(2, 0x2000) && m.owns(2, 0x207c));
        assert!(!m.owns(2, 0x2080) && !m.owns(1, 0x2000) && !m.owns(2, 0x1ffc));
        // Vectors start masked; nothing routes until enabled and unmasked.
        let mut ctl = [0u8; 4];
        m.table_read(0x200c, &mut ctl);
        assert_eq!(u32::from_le_bytes(ctl), 1);
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
        assert_eq!(
            m.message(),
            Some(MsiMessage {
                address: 0xfee0_1000,
                data: 0x41
            })
        );
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
    fn msix_table_size_is_bounded_by_the_spec() {
        let m = VirtualMsix::new(0x40, 0xffff_0011, 0, 0);
        assert!(m.owns(0, (MSIX_MAX_VECTORS as u64 - 1) * 16));
        assert!(!m.owns(0, MSIX_MAX_VECTORS as u64 * 16));
    }

    #[test]
    fn msi_enable_bit_transitions() {
        assert_eq!(msi_change(false, true), MsiChange::Enable);
        assert_eq!(msi_change(true, false), MsiChange::Disable);
        assert_eq!(msi_change(true, true), MsiChange::None);
        assert_eq!(msi_change(false, false), MsiChange::None);
    }
}
