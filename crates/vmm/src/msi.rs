//! Message-signalled interrupts as a guest sees them (PCI Local Bus 3.0, 6.8): the MSI model,
//! kept in the VMM for the emulated device and for a VFIO device alike (the MSI-X model is
//! msix.rs; interrupts.rs holds both for a function). Pure: the device decides, the bus routes.

use super::config::merge;

/// Capability ID of MSI (PCI Local Bus 3.0, 6.8.1).
pub const CAP_ID_MSI: u8 = 0x05;
/// Where the emulated device's MSI capability sits.
pub const MSI_CAP_OFFSET: u16 = 0x50;
const MSI_ENABLE: u16 = 1 << 0;
pub(super) const MSI_64BIT: u16 = 1 << 7;
const MSI_PER_VECTOR_MASK: u16 = 1 << 8;

/// An MSI message as the guest programmed it: what the device writes to raise its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// What a guest's write to an enable bit asks of the device (VFIO_DEVICE_SET_IRQS for VFIO).
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

/// An MSI capability with one vector at `offset` of config space: the guest writes the
/// address, the data and the enable bit; only what the spec makes writable changes. 64-bit
/// (the emulated device's) or 32-bit layout; a device's per-vector mask registers, after the
/// data, are not part of it (they stay the device's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msi {
    pub offset: u16,
    pub(super) next: u8,
    control: u16,
    address_lo: u32,
    address_hi: u32,
    data: u16,
}

impl Msi {
    /// The emulated device's: 64-bit, at `MSI_CAP_OFFSET`.
    pub fn emulated(next: u8) -> Self {
        Self::from_control(MSI_CAP_OFFSET, next, MSI_64BIT)
    }

    /// The guest's view of a device's capability whose header dword at `offset` is `header`:
    /// its layout (64-bit, masking) kept, one vector offered, disabled.
    pub fn from_header(offset: u16, header: u32) -> Self {
        Self::from_control(offset, (header >> 8) as u8, (header >> 16) as u16)
    }

    fn from_control(offset: u16, next: u8, control: u16) -> Self {
        Self {
            offset,
            next,
            control: control & (MSI_64BIT | MSI_PER_VECTOR_MASK),
            address_lo: 0,
            address_hi: 0,
            data: 0,
        }
    }

    fn is64(&self) -> bool {
        self.control & MSI_64BIT != 0
    }

    /// Bytes from the capability's start that this model owns (header, address, data).
    pub fn window(&self) -> u16 {
        if self.is64() {
            0x10
        } else {
            0x0c
        }
    }

    /// The offset inside the capability, for a config access at `offset` it owns.
    pub fn inside(&self, offset: u16) -> Option<u16> {
        let rel = offset.checked_sub(self.offset)?;
        (rel < self.window()).then_some(rel)
    }

    /// Dword `index` of the capability.
    pub fn dword(&self, index: usize) -> u32 {
        let header =
            u32::from(CAP_ID_MSI) | (u32::from(self.next) << 8) | (u32::from(self.control) << 16);
        match (index, self.is64()) {
            (0, _) => header,
            (1, _) => self.address_lo,
            (2, true) => self.address_hi,
            (3, true) | (2, false) => u32::from(self.data),
            _ => 0,
        }
    }

    /// Applies a `size`-byte write at `rel` inside the capability.
    pub fn write(&mut self, rel: u16, size: u8, value: u32) -> MsiChange {
        let before = self.enabled();
        let index = usize::from(rel / 4);
        let merged = merge(self.dword(index), rel, size, value);
        match (index, self.is64()) {
            // One vector: Multiple Message Enable stays 0; only the enable bit is writable.
            (0, _) => {
                self.control = (self.control & !MSI_ENABLE) | ((merged >> 16) as u16 & MSI_ENABLE)
            }
            (1, _) => self.address_lo = merged & !0x3,
            (2, true) => self.address_hi = merged,
            (3, true) | (2, false) => self.data = merged as u16,
            _ => {}
        }
        msi_change(before, self.enabled())
    }

    pub fn enabled(&self) -> bool {
        self.control & MSI_ENABLE != 0
    }

    /// The message to send, while MSI is enabled.
    pub fn message(&self) -> Option<MsiMessage> {
        self.enabled().then(|| MsiMessage {
            address: (u64::from(self.address_hi) << 32) | u64::from(self.address_lo),
            data: u32::from(self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_owns_only_its_window() {
        // A 64-bit capability at 0x68 whose next capability is at 0x78.
        let m = Msi::from_header(0x68, 0x0080_7805);
        assert_eq!(m.inside(0x68), Some(0));
        assert_eq!(m.inside(0x74), Some(0x0c));
        assert_eq!(m.inside(0x78), None);
        assert_eq!(m.inside(0x64), None);
        assert_eq!(m.dword(0), 0x0080_7805);
        // 32-bit layout: data at +8, the window ends at +0xc.
        let m = Msi::from_header(0x50, 0x0000_0005);
        assert_eq!(m.inside(0x5c), None);
    }

    #[test]
    fn a_32_bit_capability_keeps_its_layout() {
        // Device control: 32-bit, masking, 4 vectors capable -> guest sees one vector.
        let mut m = Msi::from_header(0x40, 0x0104_6005);
        assert_eq!(m.window(), 0x0c);
        assert_eq!(m.dword(0) >> 16, u32::from(MSI_PER_VECTOR_MASK));
        m.write(4, 4, 0xfee0_1000);
        m.write(8, 2, 0x45);
        assert_eq!(m.write(0, 4, 0x0001_0000), MsiChange::Enable);
        assert_eq!(
            m.message(),
            Some(MsiMessage {
                address: 0xfee0_1000,
                data: 0x45
            })
        );
        assert_eq!(m.dword(0) & 0xffff, 0x6005, "id and next kept");
        assert_eq!(m.write(0, 4, 0), MsiChange::Disable);
    }

    #[test]
    fn msi_enable_bit_transitions() {
        assert_eq!(msi_change(false, true), MsiChange::Enable);
        assert_eq!(msi_change(true, false), MsiChange::Disable);
        assert_eq!(msi_change(true, true), MsiChange::None);
        assert_eq!(msi_change(false, false), MsiChange::None);
    }
}
