//! The passthrough device seam: what the VMM needs from the PCI function it gives a guest,
//! and the emulated implementation used where no VFIO exists (and in tests).

use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::description::{DescriptionError, GuestPci};
use super::msi::MsiMessage;
use super::pci::{BarRegion, Bars, ConfigSpace, PciIds};
use super::seams::RamBar;

/// Register offsets inside BAR0 of the emulated device.
pub const REG_SCRATCH: u64 = 0;
/// Writing 1 here raises the device's interrupt once.
pub const REG_RAISE_IRQ: u64 = 4;
/// Read-only: how many interrupts the device has raised.
pub const REG_IRQ_COUNT: u64 = 8;
/// Read-only: the dword at `RAM_PEEK_OFFSET` of the RAM-backed BAR, read by the host.
pub const REG_RAM_PEEK: u64 = 12;
/// Read-only: how many guest accesses to the RAM-backed BAR trapped to the VMM (0 while
/// the BAR is a KVM memory slot).
pub const REG_RAM_TRAPS: u64 = 16;
pub const RAM_PEEK_OFFSET: u64 = 0x100;
/// Where the emulated device's vendor-specific capability sits: it heads the capability list
/// and carries `EMULATED_SIGNATURE`, so a guest tells this register block from a real device
/// of the same class (an emulated mtty profile has the 16550's class but not its registers).
pub const VENDOR_CAP_OFFSET: u16 = 0x70;
/// "vgpd", the dword after the vendor capability's header.
pub const EMULATED_SIGNATURE: u32 = u32::from_le_bytes(*b"vgpd");
const CAP_ID_VENDOR: u32 = 0x09;
const CAP_POINTER: u16 = 0x34;

/// A PCI function attached to a guest: an emulated one or a VFIO device.
pub trait PassthroughDevice: Send {
    /// One line for logs and the serial banner; says plainly whether this is emulated.
    fn describe(&self) -> String;
    fn config_read(&mut self, offset: u16, size: u8) -> u32;
    fn config_write(&mut self, offset: u16, size: u8, value: u32);
    /// BARs decoding at their current guest addresses (after the guest's relocation).
    fn bar_regions(&self) -> Vec<BarRegion>;
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The eventfd the device signals for INTx; the VMM binds it to a GSI with KVM_IRQFD.
    fn irq_eventfd(&self) -> Option<&EventFd>;
    /// For a level-triggered INTx the device masks after each interrupt (VFIO's automasked
    /// INTx): the eventfd KVM signals when the guest acknowledges it, which unmasks the line.
    /// The VMM then binds `irq_eventfd` with KVM_IRQFD_FLAG_RESAMPLE.
    fn irq_resample_eventfd(&self) -> Option<&EventFd> {
        None
    }
    /// The eventfd the device signals for MSI; the VMM binds it to the device's MSI GSI and
    /// routes that GSI to `msi_message` with KVM_SET_GSI_ROUTING.
    fn msi_eventfd(&self) -> Option<&EventFd> {
        None
    }
    /// The MSI message the guest programmed, while it has MSI enabled.
    fn msi_message(&self) -> Option<MsiMessage> {
        None
    }
    /// BARs the VMM maps as memory slots instead of trapping their accesses.
    fn ram_bars(&self) -> Vec<RamBar> {
        Vec::new()
    }
    /// The dword at `offset` of a memory-slot BAR, read by the VMM from the host memory behind
    /// it (not through the guest), or `None` when that BAR is not a memory slot.
    fn host_peek(&self, bar: usize, offset: u64) -> Option<u32> {
        let ram = self.ram_bars().into_iter().find(|r| r.index == bar)?;
        if offset.checked_add(4)? > ram.size {
            return None;
        }
        // SAFETY: `host_addr` is a live mapping of `size` bytes owned by the device (see
        // `RamBar`) and the dword lies inside it; a volatile read, as the guest writes it
        // concurrently through KVM.
        Some(unsafe { std::ptr::read_volatile((ram.host_addr + offset) as *const u32) })
    }
    /// The BAR layout, for firmware-style initial placement.
    fn bars(&self) -> &Bars;
}

/// A PCI function built from a description, with one device register block in BAR0, an MSI
/// capability, and its last prefetchable memory BAR (a VRAM aperture on a GPU) backed by host
/// memory. Always reported as emulated: it proves the VMM's PCI, interrupt and memory-slot
/// plumbing, not VFIO.
pub struct EmulatedDevice {
    config: ConfigSpace,
    scratch: u32,
    irq_count: u32,
    msi_count: u32,
    irq: EventFd,
    msi: EventFd,
    ram: Option<(usize, MmapRegion)>,
    ram_traps: u32,
}

/// The BAR an emulated device backs with memory: its last prefetchable memory BAR.
pub fn ram_bar_index(bars: &Bars) -> Option<usize> {
    (0..6).rev().find(|&i| {
        matches!(
            bars.slot(i),
            super::pci::BarSlot::Mem32 {
                prefetchable: true,
                ..
            } | super::pci::BarSlot::Mem64Low {
                prefetchable: true,
                ..
            }
        )
    })
}

impl EmulatedDevice {
    pub fn new(desc: &GuestPci) -> Result<Self, DescriptionError> {
        let bars = Bars::new(&desc.bars)?;
        let ids = PciIds {
            vendor: desc.vendor,
            device: desc.device,
            subsystem_vendor: desc.subsystem_vendor,
            subsystem_device: desc.subsystem_device,
            class_code: desc.class_code,
            revision: 0xa1,
        };
        let eventfd = || {
            EventFd::new(EFD_NONBLOCK).map_err(|source| DescriptionError::Read {
                path: "eventfd".to_owned(),
                source,
            })
        };
        let ram = match ram_bar_index(&bars) {
            Some(index) => {
                let size = bars.region(index).map(|r| r.size).unwrap_or(0);
                // Anonymous and MAP_NORESERVE: only the pages the guest touches cost memory.
                let region = usize::try_from(size)
                    .ok()
                    .and_then(|size| MmapRegion::new(size).ok())
                    .ok_or(DescriptionError::RamBar(index))?;
                Some((index, region))
            }
            None => None,
        };
        let mut config = ConfigSpace::new(ids, bars.clone(), 1).with_msi();
        // MSI-X needs its table in BAR0: a memory BAR of at least a page.
        if matches!(bars.region(0), Some(r) if !r.io && r.size >= 0x1000) {
            config = config.with_msix();
        }
        Ok(Self {
            config,
            scratch: 0,
            irq_count: 0,
            msi_count: 0,
            irq: eventfd()?,
            msi: eventfd()?,
            ram,
            ram_traps: 0,
        })
    }

    fn ram_peek(&self) -> u32 {
        self.ram
            .as_ref()
            .and_then(|(_, r)| {
                r.as_volatile_slice()
                    .read_obj::<u32>(RAM_PEEK_OFFSET as usize)
                    .ok()
            })
            .unwrap_or(0)
    }

    pub fn irq_count(&self) -> u32 {
        self.irq_count
    }

    /// How many of the interrupts went out as MSI.
    pub fn msi_count(&self) -> u32 {
        self.msi_count
    }

    /// One interrupt: MSI-X vector 0 while MSI-X is enabled (left pending while masked), an
    /// MSI while MSI is enabled, INTx otherwise.
    fn raise(&mut self) {
        self.irq_count = self.irq_count.wrapping_add(1);
        let interrupts = &mut self.config.interrupts;
        let fd = if let Some(msix) = interrupts.msix.as_mut().filter(|m| m.enabled()) {
            if !msix.raise() {
                return;
            }
            self.msi_count = self.msi_count.wrapping_add(1);
            &self.msi
        } else if interrupts.msi.is_some_and(|m| m.enabled()) {
            self.msi_count = self.msi_count.wrapping_add(1);
            &self.msi
        } else {
            &self.irq
        };
        if let Err(e) = fd.write(1) {
            tracing::warn!("emulated device cannot signal its interrupt: {e}");
        }
    }

    fn register_read(&self, offset: u64) -> u32 {
        match offset {
            REG_SCRATCH => self.scratch,
            REG_IRQ_COUNT => self.irq_count,
            REG_RAM_PEEK => self.ram_peek(),
            REG_RAM_TRAPS => self.ram_traps,
            _ => 0,
        }
    }
}

fn le_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

impl PassthroughDevice for EmulatedDevice {
    fn describe(&self) -> String {
        format!(
            "{:04x}:{:04x} emulated (no VFIO)",
            self.config.read(0, 2),
            self.config.read(2, 2)
        )
    }

    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        let dword = match offset & !3 {
            CAP_POINTER => u32::from(VENDOR_CAP_OFFSET),
            VENDOR_CAP_OFFSET => {
                CAP_ID_VENDOR | (self.config.read(CAP_POINTER, 1) << 8) | (8 << 16)
            }
            o if o == VENDOR_CAP_OFFSET + 4 => EMULATED_SIGNATURE,
            _ => return self.config.read(offset, size),
        };
        super::config::extract(dword, offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.config.write(offset, size, value);
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.decoding_regions()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some((index, region)) = &self.ram {
            if *index == bar {
                // Only while the BAR is not a memory slot (never, once the VMM maps it).
                self.ram_traps = self.ram_traps.wrapping_add(1);
                if region
                    .as_volatile_slice()
                    .read_slice(data, offset as usize)
                    .is_err()
                {
                    data.fill(0xff);
                }
                return;
            }
        }
        if let Some(m) = self.config.interrupts.msix.as_ref() {
            if m.owns(bar, offset) {
                return m.table_read(offset, data);
            }
            if m.owns_pba(bar, offset) {
                return m.pba_read(offset, data);
            }
        }
        let value = if bar == 0 {
            self.register_read(offset & !3) >> ((offset & 3) * 8)
        } else {
            0
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some((index, region)) = &self.ram {
            if *index == bar {
                self.ram_traps = self.ram_traps.wrapping_add(1);
                let _ = region
                    .as_volatile_slice()
                    .write_slice(data, offset as usize);
                return;
            }
        }
        if let Some(m) = self.config.interrupts.msix.as_mut() {
            if m.owns(bar, offset) {
                return m.table_write(offset, data);
            }
            if m.owns_pba(bar, offset) {
                return;
            }
        }
        if bar != 0 {
            return;
        }
        match offset {
            REG_SCRATCH => self.scratch = le_value(data),
            REG_RAISE_IRQ if le_value(data) & 1 == 1 => self.raise(),
            _ => {}
        }
    }

    fn irq_eventfd(&self) -> Option<&EventFd> {
        Some(&self.irq)
    }

    fn msi_eventfd(&self) -> Option<&EventFd> {
        Some(&self.msi)
    }

    fn msi_message(&self) -> Option<MsiMessage> {
        self.config.interrupts.message()
    }

    fn ram_bars(&self) -> Vec<RamBar> {
        self.ram
            .iter()
            .map(|(index, region)| RamBar {
                index: *index,
                host_addr: region.as_ptr() as u64,
                size: region.size() as u64,
            })
            .collect()
    }

    fn bars(&self) -> &Bars {
        &self.config.bars
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::parse_description;

    const T4: &str = r#"{"vendor":4318,"device":7864,"subsystem_vendor":4318,"subsystem_device":4873,
        "class_code":197120,"bars":[{"index":0,"size":16777216},
        {"index":1,"size":268435456,"prefetchable":true,"is64":true}]}"#;

    fn t4() -> EmulatedDevice {
        EmulatedDevice::new(&parse_description("t4.json", T4).unwrap()).unwrap()
    }

    /// The device's MSI message is vector 0x41 at the local APIC, and a raise signals it.
    fn assert_raise_sends_msi_0x41(dev: &mut EmulatedDevice) {
        assert_eq!(
            dev.msi_message(),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x41
            })
        );
        dev.bar_write(0, REG_RAISE_IRQ, &[1, 0, 0, 0]);
        assert_eq!(dev.msi_eventfd().unwrap().read().unwrap(), 1);
    }

    #[test]
    fn description_parses_and_builds_ids() {
        let mut dev = t4();
        assert_eq!(dev.config_read(0, 4), 0x1eb8_10de);
        assert_eq!(dev.config_read(0x2c, 4), 0x1309_10de);
        assert_eq!(dev.config_read(0x08, 4) >> 8, 0x030200);
        assert!(dev.describe().contains("emulated (no VFIO)"));
    }

    #[test]
    fn bad_descriptions_are_rejected() {
        assert!(matches!(
            parse_description("x", "{}"),
            Err(DescriptionError::Parse { .. })
        ));
        assert!(matches!(
            parse_description("x", r#"{"vendor":1,"device":2,"class_code":1,"color":3}"#),
            Err(DescriptionError::Parse { .. })
        ));
        assert!(matches!(
            parse_description("x", r#"{"vendor":1,"device":2,"class_code":16777216}"#),
            Err(DescriptionError::Class(_))
        ));
        assert!(matches!(
            parse_description(
                "x",
                r#"{"vendor":1,"device":2,"class_code":1,"bars":[{"index":0,"size":3}]}"#
            ),
            Err(DescriptionError::Bars(_))
        ));
    }

    #[test]
    fn scratch_round_trip_and_irq_signal() {
        let mut dev = t4();
        dev.bar_write(0, REG_SCRATCH, &0x5aa5_c33cu32.to_le_bytes());
        let mut buf = [0u8; 4];
        dev.bar_read(0, REG_SCRATCH, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0x5aa5_c33c);
        dev.bar_write(0, REG_RAISE_IRQ, &[1, 0, 0, 0]);
        assert_eq!(dev.irq_eventfd().unwrap().read().unwrap(), 1);
        dev.bar_read(0, REG_IRQ_COUNT, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 1);
    }

    #[test]
    fn msix_vector_zero_is_programmed_through_bar0() {
        use crate::msix::{MSIX_CAP_OFFSET, TABLE_OFFSET};
        let mut dev = t4();
        dev.bar_write(0, TABLE_OFFSET, &0xfee0_0000u32.to_le_bytes());
        dev.bar_write(0, TABLE_OFFSET + 8, &0x41u32.to_le_bytes());
        dev.bar_write(0, TABLE_OFFSET + 12, &0u32.to_le_bytes());
        dev.config_write(MSIX_CAP_OFFSET + 2, 2, 0x8000);
        assert_raise_sends_msi_0x41(&mut dev);
        let mut buf = [0u8; 4];
        dev.bar_read(0, TABLE_OFFSET + 8, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0x41);
    }

    #[test]
    fn last_prefetchable_bar_is_host_memory() {
        let mut dev = t4();
        let ram = dev.ram_bars();
        assert_eq!(ram.len(), 1);
        assert_eq!((ram[0].index, ram[0].size), (1, 256 << 20));
        // Trapped accesses (before the VMM maps a slot) reach the same memory.
        dev.bar_write(1, RAM_PEEK_OFFSET, &0x1234_abcdu32.to_le_bytes());
        let mut buf = [0u8; 4];
        dev.bar_read(0, REG_RAM_PEEK, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0x1234_abcd);
        dev.bar_read(0, REG_RAM_TRAPS, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 1);
        assert_eq!(dev.host_peek(1, RAM_PEEK_OFFSET), Some(0x1234_abcd));
        assert_eq!(dev.host_peek(1, (256 << 20) - 2), None);
        assert_eq!(dev.host_peek(0, 0), None, "BAR0 is registers");
    }

    #[test]
    fn vendor_capability_heads_the_list_and_signs_the_device() {
        use crate::msi::{CAP_ID_MSI, MSI_CAP_OFFSET};
        use crate::pci::find_capability;
        let mut dev = t4();
        let mut read = |o: u16| dev.config_read(o, 4);
        assert_eq!(read(CAP_POINTER) & 0xff, u32::from(VENDOR_CAP_OFFSET));
        let header = read(VENDOR_CAP_OFFSET);
        assert_eq!(header & 0xff, CAP_ID_VENDOR);
        assert_eq!((header >> 8) & 0xff, u32::from(MSI_CAP_OFFSET));
        assert_eq!(read(VENDOR_CAP_OFFSET + 4), EMULATED_SIGNATURE);
        assert_eq!(dev.config_read(VENDOR_CAP_OFFSET + 4, 1), u32::from(b'v'));
        let cell = std::cell::RefCell::new(dev);
        let found = find_capability(|o| cell.borrow_mut().config_read(o, 4), CAP_ID_MSI);
        assert_eq!(found, Some(MSI_CAP_OFFSET));
    }

    #[test]
    fn enabled_msi_takes_the_interrupt_from_intx() {
        use crate::msi::MSI_CAP_OFFSET;
        let mut dev = t4();
        dev.config_write(MSI_CAP_OFFSET + 4, 4, 0xfee0_0000);
        dev.config_write(MSI_CAP_OFFSET + 12, 2, 0x41);
        dev.config_write(MSI_CAP_OFFSET + 2, 2, 1);
        assert_raise_sends_msi_0x41(&mut dev);
        assert!(dev.irq_eventfd().unwrap().read().is_err(), "no INTx");
        assert_eq!((dev.irq_count(), dev.msi_count()), (1, 1));
        dev.config_write(MSI_CAP_OFFSET + 2, 2, 0);
        assert_eq!(dev.msi_message(), None);
        dev.bar_write(0, REG_RAISE_IRQ, &[1, 0, 0, 0]);
        assert_eq!(dev.irq_eventfd().unwrap().read().unwrap(), 1);
    }
}
