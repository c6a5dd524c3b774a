//! PCI configuration space as a guest sees it: BAR registers with sizing and relocation,
//! a type-0 header, the host bridge, and configuration mechanism #1 (0xCF8/0xCFC).
//! Everything here is pure so the rules are unit-tested without KVM.

use super::config::{extract, merge};
use super::interrupts::MessageInterrupts;
use super::msi::{Msi, MSI_CAP_OFFSET};
use super::msix::{Msix, MSIX_CAP_OFFSET};
use vgpud_model::guest::GuestBar;

/// Port of the CONFIG_ADDRESS register of configuration mechanism #1.
pub const CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// First port of the CONFIG_DATA window (0xCFC..=0xCFF).
pub const CONFIG_DATA_PORT: u16 = 0xcfc;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
const COMMAND_WRITABLE: u16 = 0x0407; // io, memory, bus master, INTx disable

/// A decoded CONFIG_ADDRESS value (bus, device, function, dword-aligned register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    pub register: u8,
}

impl ConfigAddress {
    /// Decodes CONFIG_ADDRESS; `None` when the enable bit (31) is clear.
    pub fn decode(value: u32) -> Option<Self> {
        if value & 0x8000_0000 == 0 {
            return None;
        }
        Some(Self {
            bus: (value >> 16) as u8,
            device: ((value >> 11) & 0x1f) as u8,
            function: ((value >> 8) & 0x7) as u8,
            register: (value & 0xfc) as u8,
        })
    }
}

/// What one of the six BAR slots of a type-0 header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarSlot {
    Unused,
    Io {
        size: u64,
    },
    Mem32 {
        size: u64,
        prefetchable: bool,
    },
    /// Low half of a 64-bit memory BAR; the next slot is its `Mem64High`.
    Mem64Low {
        size: u64,
        prefetchable: bool,
    },
    Mem64High {
        size: u64,
    },
}

/// Where a BAR currently decodes in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    pub index: usize,
    pub base: u64,
    pub size: u64,
    pub io: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarError {
    #[error("BAR index {0} is out of range 0..=5")]
    Index(u8),
    #[error("BAR {0} is described twice or overlaps a 64-bit BAR")]
    Overlap(u8),
    #[error("BAR {index} size {size:#x} is not a power of two in the allowed range")]
    Size { index: u8, size: u64 },
    #[error("BAR {0} is marked both io and 64-bit or prefetchable")]
    IoFlags(u8),
}

/// The six BAR registers of a type-0 header. Sizes are fixed at creation; the guest writes
/// addresses, and reads give back the address masked to the size with the type bits, so
/// writing all-ones and reading back yields the size mask (PCI Local Bus 3.0, 6.2.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bars {
    slots: [BarSlot; 6],
    regs: [u32; 6],
}

impl Bars {
    pub fn new(bars: &[GuestBar]) -> Result<Self, BarError> {
        let mut slots = [BarSlot::Unused; 6];
        for bar in bars {
            let i = usize::from(bar.index);
            if i > 5 || (bar.is64 && i == 5) {
                return Err(BarError::Index(bar.index));
            }
            let min = if bar.io { 4 } else { 16 };
            let max = if bar.io {
                256
            } else if bar.is64 {
                1 << 40
            } else {
                1 << 31
            };
            if !bar.size.is_power_of_two() || bar.size < min || bar.size > max {
                return Err(BarError::Size {
                    index: bar.index,
                    size: bar.size,
                });
            }
            if bar.io && (bar.is64 || bar.prefetchable) {
                return Err(BarError::IoFlags(bar.index));
            }
            let taken = |s: &BarSlot| *s != BarSlot::Unused;
            if taken(&slots[i]) || (bar.is64 && taken(&slots[i + 1])) {
                return Err(BarError::Overlap(bar.index));
            }
            let (size, prefetchable) = (bar.size, bar.prefetchable);
            slots[i] = match (bar.io, bar.is64) {
                (true, _) => BarSlot::Io { size },
                (false, false) => BarSlot::Mem32 { size, prefetchable },
                (false, true) => {
                    slots[i + 1] = BarSlot::Mem64High { size };
                    BarSlot::Mem64Low { size, prefetchable }
                }
            };
        }
        Ok(Self {
            slots,
            regs: [0; 6],
        })
    }

    pub fn slot(&self, index: usize) -> BarSlot {
        self.slots.get(index).copied().unwrap_or(BarSlot::Unused)
    }

    /// The register value a guest reads.
    pub fn read(&self, index: usize) -> u32 {
        let Some(reg) = self.regs.get(index).copied() else {
            return 0;
        };
        match self.slot(index) {
            BarSlot::Unused => 0,
            BarSlot::Io { size } => (reg & !(size as u32 - 1) & 0xffff_fffc) | 0x1,
            BarSlot::Mem32 { size, prefetchable } => {
                (reg & !(size as u32 - 1) & 0xffff_fff0) | (u32::from(prefetchable) << 3)
            }
            BarSlot::Mem64Low { size, prefetchable } => {
                let mask = !(size - 1) as u32 & 0xffff_fff0;
                (reg & mask) | 0x4 | (u32::from(prefetchable) << 3)
            }
            BarSlot::Mem64High { size } => reg & ((!(size - 1)) >> 32) as u32,
        }
    }

    pub fn write(&mut self, index: usize, value: u32) {
        if let Some(reg) = self.regs.get_mut(index) {
            *reg = value;
        }
    }

    /// Where BAR `index` decodes now (`None` for an unused slot or the high half).
    pub fn region(&self, index: usize) -> Option<BarRegion> {
        let (size, io, base) = match self.slot(index) {
            BarSlot::Unused | BarSlot::Mem64High { .. } => return None,
            BarSlot::Io { size } => (size, true, u64::from(self.read(index) & !0x3)),
            BarSlot::Mem32 { size, .. } => (size, false, u64::from(self.read(index) & !0xf)),
            BarSlot::Mem64Low { size, .. } => {
                let high = u64::from(self.read(index + 1)) << 32;
                (size, false, high | u64::from(self.read(index) & !0xf))
            }
        };
        Some(BarRegion {
            index,
            base,
            size,
            io,
        })
    }

    pub fn regions(&self) -> impl Iterator<Item = BarRegion> + '_ {
        (0..6).filter_map(|i| self.region(i))
    }
}

/// Size from a value read back after writing all-ones: what a guest's sizing code computes.
pub fn size_from_mask(mask: u32, io: bool) -> u64 {
    let low = if io { mask & !0x3 } else { mask & !0xf };
    u64::from((!low).wrapping_add(1))
}

const STATUS_CAP_LIST: u32 = 1 << 20; // status bit 4, seen in dword 1
const CAP_POINTER: usize = 0x34 / 4;

/// Walks the capability list of a function whose config space `read` returns by dword
/// offset; the offset of the first capability with `id`. Bounded, so a looping list ends.
pub fn find_capability(read: impl Fn(u16) -> u32, id: u8) -> Option<u16> {
    if read(0x04) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = (read(0x34) & 0xfc) as u16;
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        let header = read(at);
        if header as u8 == id {
            return Some(at);
        }
        at = ((header >> 8) & 0xfc) as u16;
    }
    None
}

/// A type-0 configuration header with virtualized BARs: the config space of the emulated
/// device and of the host bridge.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    dwords: [u32; 64],
    pub bars: Bars,
    /// MSI and MSI-X, where the function has them.
    pub interrupts: MessageInterrupts,
}

/// Identity of a PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    pub class_code: u32,
    pub revision: u8,
}

impl ConfigSpace {
    pub fn new(ids: PciIds, bars: Bars, interrupt_pin: u8) -> Self {
        let mut dwords = [0u32; 64];
        dwords[0] = u32::from(ids.vendor) | (u32::from(ids.device) << 16);
        dwords[2] = (ids.class_code << 8) | u32::from(ids.revision);
        dwords[11] = u32::from(ids.subsystem_vendor) | (u32::from(ids.subsystem_device) << 16);
        dwords[15] = u32::from(interrupt_pin) << 8;
        Self {
            dwords,
            bars,
            interrupts: MessageInterrupts::default(),
        }
    }

    /// Adds an MSI-X capability at `MSIX_CAP_OFFSET` after the MSI one (table and PBA in
    /// BAR0, which the device decodes).
    pub fn with_msix(mut self) -> Self {
        self.dwords[1] |= STATUS_CAP_LIST;
        match self.interrupts.msi.as_mut() {
            Some(msi) => msi.next = MSIX_CAP_OFFSET as u8,
            None => self.dwords[CAP_POINTER] = u32::from(MSIX_CAP_OFFSET),
        }
        self.interrupts.msix = Some(Msix::emulated(0));
        self
    }

    /// Adds an MSI capability at `MSI_CAP_OFFSET` as the only entry of the capability list.
    pub fn with_msi(mut self) -> Self {
        self.dwords[1] |= STATUS_CAP_LIST;
        self.dwords[CAP_POINTER] = u32::from(MSI_CAP_OFFSET);
        self.interrupts.msi = Some(Msi::emulated(0));
        self
    }

    pub fn read(&self, offset: u16, size: u8) -> u32 {
        if let Some(value) = self.interrupts.config_read(offset, size) {
            return value;
        }
        let index = usize::from(offset / 4);
        let dword = match index {
            4..=9 => self.bars.read(index - 4),
            _ => self.dwords.get(index).copied().unwrap_or(0),
        };
        extract(dword, offset, size)
    }

    /// Applies a guest write; only the command register, BARs, cache line size, latency
    /// timer and interrupt line are writable, as on real hardware.
    pub fn write(&mut self, offset: u16, size: u8, value: u32) {
        if self.interrupts.config_write(offset, size, value).is_some() {
            return;
        }
        let index = usize::from(offset / 4);
        match index {
            1 => {
                let old = self.dwords[1];
                let merged = merge(old, offset, size, value);
                let command = (merged as u16) & COMMAND_WRITABLE;
                self.dwords[1] = (old & 0xffff_0000) | u32::from(command);
            }
            3 => {
                let merged = merge(self.dwords[3], offset, size, value);
                self.dwords[3] = (self.dwords[3] & 0xffff_0000) | (merged & 0xffff);
            }
            4..=9 => {
                let old = self.bars.read(index - 4);
                self.bars.write(index - 4, merge(old, offset, size, value));
            }
            15 => {
                let merged = merge(self.dwords[15], offset, size, value);
                self.dwords[15] = (self.dwords[15] & 0xffff_ff00) | (merged & 0xff);
            }
            _ => {}
        }
    }

    pub fn command(&self) -> u16 {
        self.dwords[1] as u16
    }

    /// BAR regions that decode now: IO BARs need COMMAND_IO, memory BARs COMMAND_MEMORY.
    pub fn decoding_regions(&self) -> Vec<BarRegion> {
        let command = self.command();
        self.bars
            .regions()
            .filter(|r| {
                if r.io {
                    command & COMMAND_IO != 0
                } else {
                    command & COMMAND_MEMORY != 0
                }
            })
            .collect()
    }
}

/// The host bridge at 00:00.0 (Intel 440FX ids, as QEMU's i440fx machine shows).
pub fn host_bridge() -> ConfigSpace {
    let ids = PciIds {
        vendor: 0x8086,
        device: 0x1237,
        subsystem_vendor: 0,
        subsystem_device: 0,
        class_code: 0x06_00_00,
        revision: 2,
    };
    let Ok(bars) = Bars::new(&[]) else {
        unreachable!("an empty BAR list is always valid")
    };
    ConfigSpace::new(ids, bars, 0)
}

/// First-fit placement of BARs as firmware would do before the guest starts: IO from
/// `io_base`, memory from `mem_base`, each aligned to its size, largest first.
pub fn assign_addresses(
    bars: &Bars,
    io_base: u64,
    mem_base: u64,
    mem_limit: u64,
) -> Option<Vec<(usize, u64)>> {
    let mut order: Vec<BarRegion> = bars.regions().collect();
    order.sort_by_key(|r| std::cmp::Reverse(r.size));
    let (mut io_next, mut mem_next) = (io_base, mem_base);
    let mut out = Vec::new();
    for r in order {
        let next = if r.io { &mut io_next } else { &mut mem_next };
        let base = next.checked_add(r.size - 1)? & !(r.size - 1);
        *next = base.checked_add(r.size)?;
        if (r.io && *next > 0x1_0000) || (!r.io && *next > mem_limit) {
            return None;
        }
        out.push((r.index, base));
    }
    out.sort_unstable();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msi::{MsiMessage, CAP_ID_MSI, MSI_64BIT};

    fn bar(index: u8, size: u64, io: bool, pf: bool, is64: bool) -> GuestBar {
        GuestBar {
            index,
            size,
            io,
            prefetchable: pf,
            is64,
        }
    }

    fn t4_bars() -> Bars {
        Bars::new(&[
            bar(0, 16 << 20, false, false, false),
            bar(1, 256 << 20, false, true, true),
            bar(3, 32 << 20, false, true, true),
        ])
        .unwrap()
    }

    /// A display controller (class 0300) with the T4's BARs and interrupt pin INTA.
    fn t4_like() -> ConfigSpace {
        let ids = PciIds {
            vendor: 1,
            device: 2,
            subsystem_vendor: 0,
            subsystem_device: 0,
            class_code: 0x030000,
            revision: 0,
        };
        ConfigSpace::new(ids, t4_bars(), 1)
    }

    #[test]
    fn config_address_decodes_fields() {
        let a = ConfigAddress::decode(0x8001_0a3c).unwrap();
        assert_eq!((a.bus, a.device, a.function, a.register), (1, 1, 2, 0x3c));
        assert_eq!(ConfigAddress::decode(0x0001_0a3c), None);
        assert_eq!(ConfigAddress::decode(0x8000_0003).unwrap().register, 0);
    }

    #[test]
    fn mem32_bar_sizing_reads_back_mask() {
        let mut b = t4_bars();
        b.write(0, 0xffff_ffff);
        assert_eq!(b.read(0), 0xff00_0000);
        assert_eq!(size_from_mask(b.read(0), false), 16 << 20);
    }

    #[test]
    fn mem64_bar_sizing_and_flags() {
        let mut b = t4_bars();
        b.write(1, 0xffff_ffff);
        b.write(2, 0xffff_ffff);
        assert_eq!(b.read(1), 0xf000_000c);
        assert_eq!(b.read(2), 0xffff_ffff);
        assert_eq!(b.slot(2), BarSlot::Mem64High { size: 256 << 20 });
    }

    #[test]
    fn io_bar_sizing_sets_bit0() {
        let mut b = Bars::new(&[bar(0, 8, true, false, false)]).unwrap();
        b.write(0, 0xffff_ffff);
        assert_eq!(b.read(0), 0xffff_fff9);
        assert_eq!(size_from_mask(b.read(0), true), 8);
    }

    #[test]
    fn relocation_moves_region() {
        let mut b = t4_bars();
        b.write(0, 0xe000_0000);
        b.write(1, 0xd000_0000);
        b.write(2, 0x1);
        assert_eq!(b.region(0).unwrap().base, 0xe000_0000);
        assert_eq!(b.region(1).unwrap().base, 0x1_d000_0000);
        assert_eq!(b.region(2), None);
    }

    #[test]
    fn bad_bar_descriptions_are_rejected() {
        assert_eq!(
            Bars::new(&[bar(6, 16, false, false, false)]),
            Err(BarError::Index(6))
        );
        assert_eq!(
            Bars::new(&[bar(5, 16, false, false, true)]),
            Err(BarError::Index(5))
        );
        assert!(matches!(
            Bars::new(&[bar(0, 24, false, false, false)]),
            Err(BarError::Size { .. })
        ));
        assert!(matches!(
            Bars::new(&[bar(0, 512, true, false, false)]),
            Err(BarError::Size { .. })
        ));
        assert_eq!(
            Bars::new(&[
                bar(0, 16, false, false, true),
                bar(1, 16, false, false, false)
            ]),
            Err(BarError::Overlap(1))
        );
        assert_eq!(
            Bars::new(&[bar(0, 8, true, true, false)]),
            Err(BarError::IoFlags(0))
        );
    }

    #[test]
    fn config_space_masks_read_only_fields() {
        let mut c = host_bridge();
        c.write(0, 4, 0xffff_ffff);
        assert_eq!(c.read(0, 2), 0x8086);
        assert_eq!(c.read(2, 2), 0x1237);
        assert_eq!(c.read(0x0a, 2), 0x0600);
        c.write(4, 2, 0xffff);
        assert_eq!(c.read(4, 2), u32::from(COMMAND_WRITABLE));
        c.write(0x3c, 1, 10);
        assert_eq!(c.read(0x3c, 1), 10);
    }

    #[test]
    fn sub_dword_bar_writes_merge() {
        let mut c = t4_like();
        c.write(0x10, 4, 0xc000_0000);
        c.write(0x13, 1, 0xe0);
        assert_eq!(c.read(0x10, 4), 0xe000_0000);
        assert_eq!(c.read(0x3d, 1), 1);
    }

    #[test]
    fn decoding_follows_command_register() {
        let mut c = t4_like();
        assert!(c.decoding_regions().is_empty());
        c.write(4, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(c.decoding_regions().len(), 3);
    }

    #[test]
    fn assignment_is_aligned_and_bounded() {
        let got = assign_addresses(&t4_bars(), 0xc000, 0xc000_0000, 0xe000_0000).unwrap();
        assert_eq!(
            got,
            vec![(0, 0xd200_0000), (1, 0xc000_0000), (3, 0xd000_0000)]
        );
        assert_eq!(
            assign_addresses(&t4_bars(), 0xc000, 0xc000_0000, 0xc800_0000),
            None
        );
        let io =
            Bars::new(&[bar(0, 8, true, false, false), bar(1, 8, true, false, false)]).unwrap();
        assert_eq!(
            assign_addresses(&io, 0xc000, 0, 0).unwrap(),
            vec![(0, 0xc000), (1, 0xc008)]
        );
    }

    fn device_with_msi() -> ConfigSpace {
        t4_like().with_msi()
    }

    #[test]
    fn msi_capability_is_listed_and_found() {
        let c = device_with_msi();
        assert_eq!(c.read(0x06, 2) & 0x10, 0x10, "status: capabilities list");
        assert_eq!(c.read(0x34, 1), u32::from(MSI_CAP_OFFSET));
        assert_eq!(
            find_capability(|o| c.read(o, 4), CAP_ID_MSI),
            Some(MSI_CAP_OFFSET)
        );
        assert_eq!(find_capability(|o| c.read(o, 4), 0x11), None);
        assert_eq!(
            find_capability(|o| host_bridge().read(o, 4), CAP_ID_MSI),
            None
        );
        // 64-bit capable, one vector, disabled.
        assert_eq!(c.read(MSI_CAP_OFFSET + 2, 2), u32::from(MSI_64BIT));
    }

    #[test]
    fn msix_follows_msi_in_the_capability_list() {
        use crate::msix::CAP_ID_MSIX;
        let mut c = device_with_msi().with_msix();
        assert_eq!(
            find_capability(|o| c.read(o, 4), CAP_ID_MSIX),
            Some(MSIX_CAP_OFFSET)
        );
        assert_eq!(c.read(MSI_CAP_OFFSET + 1, 1), u32::from(MSIX_CAP_OFFSET));
        c.write(MSIX_CAP_OFFSET + 2, 2, 0x8000);
        assert!(c.interrupts.msix.as_ref().unwrap().enabled());
        assert_eq!(c.read(MSIX_CAP_OFFSET + 4, 4), 0x800);
    }

    #[test]
    fn capability_walk_ends_on_a_loop() {
        // status has the list bit; 0x40 points to itself with another id.
        let read = |o: u16| match o {
            0x04 => STATUS_CAP_LIST,
            0x34 => 0x40,
            0x40 => 0x4009,
            _ => 0,
        };
        assert_eq!(find_capability(read, CAP_ID_MSI), None);
    }

    #[test]
    fn msi_programming_gives_a_message_only_when_enabled() {
        let mut c = device_with_msi();
        c.write(MSI_CAP_OFFSET + 4, 4, 0xfee0_0003);
        c.write(MSI_CAP_OFFSET + 8, 4, 0);
        c.write(MSI_CAP_OFFSET + 12, 2, 0x40);
        assert_eq!(c.interrupts.msi.unwrap().message(), None);
        // Enable, and try to set Multiple Message Enable (read-only 0 with one vector).
        c.write(MSI_CAP_OFFSET + 2, 2, 0x0071);
        assert_eq!(c.read(MSI_CAP_OFFSET + 2, 2), u32::from(MSI_64BIT | 1));
        assert_eq!(
            c.interrupts.msi.unwrap().message(),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x40
            })
        );
        // The capability header (id, next) is read-only.
        c.write(MSI_CAP_OFFSET, 2, 0xffff);
        assert_eq!(c.read(MSI_CAP_OFFSET, 2), u32::from(CAP_ID_MSI));
    }
}
