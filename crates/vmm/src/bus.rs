//! Routing of the guest's port I/O and MMIO exits: the UART, the debug exit port, PCI
//! configuration mechanism #1 and the passthrough devices' BARs wherever the guest put them.

use super::config::{extract, merge};
use super::device::PassthroughDevice;
use super::pci::{host_bridge, ConfigAddress, ConfigSpace};
use super::pci::{CONFIG_ADDRESS_PORT, CONFIG_DATA_PORT};
use super::seams::{Action, ExitHandler, InterruptRoutes, MemorySlots};
use super::uart::{Uart, COM1_BASE};

/// `outb` of a code here ends the guest; the VMM exits with that code.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Diagnostic ports for the built-in payloads (no hardware has them). A dword written to
/// `HOST_PEEK_PORT` selects `(device << 28) | (bar << 24) | offset`; a dword read there is what
/// the VMM reads at that offset of the memory behind that memory-slot BAR (all ones when it is
/// not one); a dword read at `HOST_TRAPS_PORT` is how many guest accesses to the selected
/// device's memory-slot BARs trapped to the VMM instead (0 while KVM maps them).
pub const HOST_PEEK_PORT: u16 = 0xe0;
pub const HOST_TRAPS_PORT: u16 = 0xe4;
/// The PCI slot (bus 0) of the first passthrough device; device `i` sits in slot `1 + i`.
pub const DEVICE_SLOT: u8 = 1;
/// How many passthrough devices a guest can have (one INTx line each, see `INTX_GSIS`).
pub use vgpud_launch::MAX_DEVICES;
/// The 8259/IOAPIC line of device `i`'s INTx; firmware writes it into the interrupt line.
pub const INTX_GSIS: [u32; MAX_DEVICES] = [10, 11, 9, 5];

/// The slot of device `index`.
pub fn device_slot(index: usize) -> u8 {
    DEVICE_SLOT + index as u8
}

pub struct IoBus {
    pub uart: Uart,
    bridge: ConfigSpace,
    pub devices: Vec<Box<dyn PassthroughDevice>>,
    config_address: u32,
    routes: Option<Box<dyn InterruptRoutes>>,
    slots: Option<Box<dyn MemorySlots>>,
    peek_select: u32,
    ram_traps: Vec<u32>,
}

impl IoBus {
    pub fn new(uart: Uart, devices: Vec<Box<dyn PassthroughDevice>>) -> Self {
        Self {
            uart,
            bridge: host_bridge(),
            ram_traps: vec![0; devices.len()],
            devices,
            peek_select: 0,
            config_address: 0,
            routes: None,
            slots: None,
        }
    }

    /// Lets the devices' host-memory BARs become KVM memory slots that follow the guest's
    /// BAR programming and command register.
    pub fn with_slots(mut self, slots: impl MemorySlots + 'static) -> Self {
        self.slots = Some(Box::new(slots));
        self
    }

    /// The device in `slot` of bus 0, with its index.
    fn device_at(&mut self, bus: u8, slot: u8) -> Option<(usize, &mut Box<dyn PassthroughDevice>)> {
        let index = usize::from(slot.checked_sub(DEVICE_SLOT)?);
        if bus != 0 {
            return None;
        }
        self.devices.get_mut(index).map(|d| (index, d))
    }

    /// Lets the guest's MSI programming reach the routes of the devices' MSI eventfds.
    pub fn with_routes(mut self, routes: impl InterruptRoutes + 'static) -> Self {
        self.routes = Some(Box::new(routes));
        self
    }

    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        let Some(addr) = ConfigAddress::decode(self.config_address) else {
            return all_ones(size);
        };
        let reg = u16::from(addr.register) + (offset & 3);
        if (addr.bus, addr.device, addr.function) == (0, 0, 0) {
            return self.bridge.read(reg, size);
        }
        if addr.function != 0 {
            return all_ones(size);
        }
        match self.device_at(addr.bus, addr.device) {
            Some((_, d)) => d.config_read(reg, size),
            None => all_ones(size),
        }
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        let Some(addr) = ConfigAddress::decode(self.config_address) else {
            return;
        };
        let reg = u16::from(addr.register) + (offset & 3);
        if (addr.bus, addr.device, addr.function) == (0, 0, 0) {
            self.bridge.write(reg, size, value);
            return;
        }
        if addr.function != 0 {
            return;
        }
        let Some((index, d)) = self.device_at(addr.bus, addr.device) else {
            return;
        };
        d.config_write(reg, size, value);
        self.sync_device(index);
    }

    /// Brings KVM in line with device `index` after a guest write that may have changed it:
    /// its MSI/MSI-X route and the memory slots of its host-memory BARs.
    fn sync_device(&mut self, index: usize) {
        let Some(d) = self.devices.get(index) else {
            return;
        };
        let message = d.msi_message();
        let (ram, decoding) = (d.ram_bars(), d.bar_regions());
        if let Some(routes) = self.routes.as_mut() {
            if let Err(e) = routes.route_msi(index, message) {
                tracing::warn!("MSI route cannot be updated: {e}");
            }
        }
        if let Some(slots) = self.slots.as_mut() {
            for bar in ram {
                let base = decoding
                    .iter()
                    .find(|r| r.index == bar.index && !r.io)
                    .map(|r| r.base);
                if let Err(e) = slots.place(index, &bar, base) {
                    tracing::warn!("BAR {} cannot be mapped as memory: {e}", bar.index);
                }
            }
        }
    }

    /// The device (with its index), BAR and offset that decode `addr` (the first device
    /// wins an overlap).
    fn find_bar(
        &mut self,
        addr: u64,
        io: bool,
    ) -> Option<(usize, &mut Box<dyn PassthroughDevice>, usize, u64)> {
        self.devices.iter_mut().enumerate().find_map(|(i, device)| {
            let hit = device
                .bar_regions()
                .into_iter()
                .find(|r| r.io == io && addr >= r.base && addr - r.base < r.size)?;
            Some((i, device, hit.index, addr - hit.base))
        })
    }

    /// Counts a trapped access to BAR `bar` of device `index` if that BAR is a memory slot.
    fn count_trap(&mut self, index: usize, bar: usize) {
        let ram = self.devices.get(index).map(|d| d.ram_bars());
        if ram.is_some_and(|r| r.iter().any(|r| r.index == bar)) {
            if let Some(n) = self.ram_traps.get_mut(index) {
                *n = n.wrapping_add(1);
            }
        }
    }

    /// What `HOST_PEEK_PORT` / `HOST_TRAPS_PORT` read for the current selector.
    fn host_read(&self, port: u16) -> u32 {
        let sel = self.peek_select;
        let index = (sel >> 28) as usize;
        match port {
            HOST_TRAPS_PORT => self.ram_traps.get(index).copied().unwrap_or(!0),
            _ => self
                .devices
                .get(index)
                .and_then(|d| d.host_peek(((sel >> 24) & 0xf) as usize, u64::from(sel & 0xff_ffff)))
                .unwrap_or(!0),
        }
    }
}

impl ExitHandler for IoBus {
    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        let size = data.len() as u8;
        let value = match port {
            HOST_PEEK_PORT | HOST_TRAPS_PORT if size == 4 => self.host_read(port),
            COM1_BASE..=0x3ff => u32::from(self.uart.read(port - COM1_BASE)),
            CONFIG_ADDRESS_PORT if size == 4 => self.config_address,
            CONFIG_DATA_PORT..=0xcff => self.config_read(port - CONFIG_DATA_PORT, size),
            _ => match self.find_bar(u64::from(port), true) {
                Some((_, d, bar, offset)) => {
                    d.bar_read(bar, offset, data);
                    return;
                }
                None => all_ones(size),
            },
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len().min(4)]);
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> Action {
        let size = data.len() as u8;
        let mut bytes = [0u8; 4];
        bytes[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
        let value = u32::from_le_bytes(bytes);
        match port {
            DEBUG_EXIT_PORT => return Action::Exit(value as u8),
            COM1_BASE..=0x3ff => self.uart.write(port - COM1_BASE, value as u8),
            CONFIG_ADDRESS_PORT if size == 4 => self.config_address = value,
            CONFIG_DATA_PORT..=0xcff => self.config_write(port - CONFIG_DATA_PORT, size, value),
            HOST_PEEK_PORT if size == 4 => self.peek_select = value,
            _ => {
                if let Some((i, d, bar, offset)) = self.find_bar(u64::from(port), true) {
                    d.bar_write(bar, offset, data);
                    self.sync_device(i);
                }
            }
        }
        Action::Continue
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        let hit = self.find_bar(addr, false).map(|(i, d, bar, offset)| {
            d.bar_read(bar, offset, data);
            (i, bar)
        });
        match hit {
            Some((i, bar)) => self.count_trap(i, bar),
            None => data.fill(0xff),
        }
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let hit = self.find_bar(addr, false).map(|(i, d, bar, offset)| {
            d.bar_write(bar, offset, data);
            (i, bar)
        });
        if let Some((i, bar)) = hit {
            self.count_trap(i, bar);
            // A BAR write can program an MSI-X table entry.
            self.sync_device(i);
        }
    }
}

fn all_ones(size: u8) -> u32 {
    merge(0, 0, size, 0xffff_ffff)
}

/// Value of a `size`-byte CONFIG_DATA access at `port`, as the guest sees it.
pub fn config_lane(dword: u32, port: u16, size: u8) -> u32 {
    extract(dword, port - CONFIG_DATA_PORT, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::parse_description;
    use crate::device::EmulatedDevice;

    fn bus() -> IoBus {
        let desc = parse_description(
            "mtty",
            r#"{"vendor":17224,"device":12883,"class_code":458754,
               "bars":[{"index":0,"size":8,"io":true},{"index":1,"size":8,"io":true}]}"#,
        )
        .unwrap();
        let dev = EmulatedDevice::new(&desc).unwrap();
        bus_with(vec![Box::new(dev)])
    }

    fn bus_with(devices: Vec<Box<dyn PassthroughDevice>>) -> IoBus {
        IoBus::new(Uart::new(Box::new(std::io::sink())), devices)
    }

    /// Registers in BAR0 and host memory in BAR1 (prefetchable).
    fn ram_device() -> EmulatedDevice {
        let desc = parse_description(
            "ram",
            r#"{"vendor":1,"device":2,"class_code":196608,"bars":[{"index":0,"size":4096},
               {"index":1,"size":8192,"prefetchable":true}]}"#,
        )
        .unwrap();
        EmulatedDevice::new(&desc).unwrap()
    }

    fn cfg_read(b: &mut IoBus, dev: u8, reg: u8) -> u32 {
        b.pio_write(
            0xcf8,
            &(0x8000_0000u32 | (u32::from(dev) << 11) | u32::from(reg)).to_le_bytes(),
        );
        let mut d = [0u8; 4];
        b.pio_read(0xcfc, &mut d);
        u32::from_le_bytes(d)
    }

    fn cfg_write(b: &mut IoBus, dev: u8, reg: u8, v: u32) {
        b.pio_write(
            0xcf8,
            &(0x8000_0000u32 | (u32::from(dev) << 11) | u32::from(reg)).to_le_bytes(),
        );
        b.pio_write(0xcfc, &v.to_le_bytes());
    }

    #[test]
    fn scan_finds_bridge_and_device_only() {
        let mut b = bus();
        assert_eq!(cfg_read(&mut b, 0, 0), 0x1237_8086);
        assert_eq!(cfg_read(&mut b, DEVICE_SLOT, 0), 0x3253_4348);
        assert_eq!(cfg_read(&mut b, 2, 0), 0xffff_ffff);
        b.pio_write(0xcf8, &0x0000_0800u32.to_le_bytes());
        let mut d = [0u8; 4];
        b.pio_read(0xcfc, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff);
    }

    #[test]
    fn byte_access_to_config_data_uses_lane() {
        let mut b = bus();
        b.pio_write(
            0xcf8,
            &(0x8000_0000u32 | (u32::from(DEVICE_SLOT) << 11) | 0x08).to_le_bytes(),
        );
        let mut d = [0u8; 1];
        b.pio_read(0xcfe, &mut d);
        assert_eq!(d[0], 0x00); // class 0x070002 -> byte 2 of dword 2 is subclass 0x00
        b.pio_read(0xcff, &mut d);
        assert_eq!(d[0], 0x07);
        assert_eq!(config_lane(0x0700_02a1, 0xcfd, 1), 0x02);
    }

    #[test]
    fn io_bar_routes_after_relocation_and_enable() {
        let mut b = bus();
        cfg_write(&mut b, DEVICE_SLOT, 0x10, 0xd000);
        b.pio_write(0xd000, &0x1234_5678u32.to_le_bytes());
        let mut d = [0u8; 4];
        b.pio_read(0xd000, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffff, "IO decode is off");
        cfg_write(&mut b, DEVICE_SLOT, 0x04, 1);
        b.pio_write(0xd000, &0x1234_5678u32.to_le_bytes());
        b.pio_read(0xd000, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1234_5678);
    }

    #[test]
    fn each_device_has_its_slot_and_its_bars() {
        let desc = parse_description(
            "two",
            r#"{"vendor":1,"device":2,"class_code":196608,"bars":[{"index":0,"size":16,"io":true}]}"#,
        )
        .unwrap();
        let devices: Vec<Box<dyn PassthroughDevice>> = vec![
            Box::new(EmulatedDevice::new(&desc).unwrap()),
            Box::new(EmulatedDevice::new(&desc).unwrap()),
        ];
        let mut b = bus_with(devices);
        assert_eq!(cfg_read(&mut b, device_slot(0), 0), 0x0002_0001);
        assert_eq!(cfg_read(&mut b, device_slot(1), 0), 0x0002_0001);
        assert_eq!(cfg_read(&mut b, device_slot(2), 0), 0xffff_ffff);
        for (i, port) in [(0, 0xd000u32), (1, 0xd010)] {
            cfg_write(&mut b, device_slot(i), 0x10, port);
            cfg_write(&mut b, device_slot(i), 0x04, 1);
            b.pio_write(port as u16, &(0x100 + port).to_le_bytes());
        }
        let mut d = [0u8; 4];
        b.pio_read(0xd010, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x100 + 0xd010);
        b.pio_read(0xd000, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x100 + 0xd000);
    }

    #[test]
    fn host_ports_peek_memory_bars_and_count_their_traps() {
        let dev = ram_device();
        let mut b = bus_with(vec![Box::new(dev)]);
        cfg_write(&mut b, DEVICE_SLOT, 0x14, 0xe000_0000);
        cfg_write(&mut b, DEVICE_SLOT, 0x04, 2);
        // No slots on this bus: the access traps, is counted, and lands in the memory.
        b.mmio_write(0xe000_0010, &0xfeed_f00du32.to_le_bytes());
        let mut d = [0u8; 4];
        b.pio_write(HOST_PEEK_PORT, &((1u32 << 24) | 0x10).to_le_bytes());
        b.pio_read(HOST_PEEK_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xfeed_f00d);
        b.pio_read(HOST_TRAPS_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        // BAR0 is registers, device 1 does not exist: all ones.
        b.pio_write(HOST_PEEK_PORT, &0u32.to_le_bytes());
        b.pio_read(HOST_PEEK_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), !0);
        b.pio_write(HOST_PEEK_PORT, &(1u32 << 28).to_le_bytes());
        b.pio_read(HOST_TRAPS_PORT, &mut d);
        assert_eq!(u32::from_le_bytes(d), !0);
    }

    #[test]
    fn debug_exit_port_ends_guest() {
        let mut b = bus();
        assert_eq!(b.pio_write(DEBUG_EXIT_PORT, &[3]), Action::Exit(3));
        assert_eq!(b.pio_write(0x80, &[3]), Action::Continue);
    }

    /// Records what the bus asks of the hypervisor side, in order.
    #[derive(Clone, Default)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Recorder {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl InterruptRoutes for Recorder {
        fn route_msi(
            &mut self,
            device: usize,
            message: Option<crate::msi::MsiMessage>,
        ) -> Result<(), crate::VmmError> {
            let m = message.map(|m| format!("{:#x}/{:#x}", m.address, m.data));
            self.0.lock().unwrap().push(format!("msi {device} {m:?}"));
            Ok(())
        }
    }

    impl MemorySlots for Recorder {
        fn place(
            &mut self,
            device: usize,
            ram: &crate::seams::RamBar,
            base: Option<u64>,
        ) -> Result<(), crate::VmmError> {
            let line = format!("slot {device}.{} {base:x?}", ram.index);
            self.0.lock().unwrap().push(line);
            Ok(())
        }
    }

    #[test]
    fn guest_programming_reaches_the_routes_and_slots_seams() {
        let dev = ram_device();
        let (routes, slots) = (Recorder::default(), Recorder::default());
        let mut b = bus_with(vec![Box::new(dev)])
            .with_routes(routes.clone())
            .with_slots(slots.clone());
        cfg_write(&mut b, DEVICE_SLOT, 0x14, 0xe000_0000);
        cfg_write(&mut b, DEVICE_SLOT, 0x04, 2);
        assert_eq!(
            slots.take().last().map(String::as_str),
            Some("slot 0.1 Some(e0000000)")
        );
        cfg_write(&mut b, DEVICE_SLOT, 0x54, 0xfee0_0000);
        cfg_write(&mut b, DEVICE_SLOT, 0x5c, 0x40);
        assert_eq!(routes.take().last().map(String::as_str), Some("msi 0 None"));
        cfg_write(&mut b, DEVICE_SLOT, 0x50, 1 << 16);
        assert_eq!(routes.take(), ["msi 0 Some(\"0xfee00000/0x40\")"]);
        cfg_write(&mut b, DEVICE_SLOT, 0x04, 0);
        assert_eq!(
            slots.take().last().map(String::as_str),
            Some("slot 0.1 None")
        );
    }
}
