//! The PCI view of a simulated GPU that tools read besides the ids: `config` (256 bytes, or
//! 4096 for PCI Express) and `resource`, built from the profile so the two agree: the ids,
//! class, BARs at the addresses `resource` lists, and a capability list (power management,
//! MSI, PCI Express, MSI-X; SR-IOV on a physical function with VFs). As on hardware, a VF's
//! config space reads 0xffff as vendor and device and 0 in its BARs: its ids are in sysfs and
//! its BARs come from the PF's SR-IOV capability (`lspci` marks them `[virtual]`).
//! Addresses are made up but stable: derived from the function's PCI address.

use super::kernel::{Parent, PciInfo};
use super::profile::GuestBar;

pub const CONFIG_LEN: usize = 256;
pub const CONFIG_LEN_EXPRESS: usize = 4096;
/// BARs, the ROM and the six SR-IOV VF BARs: the lines of `resource` for a non-bridge.
const RESOURCE_LINES: usize = 13;
/// Where the VF BARs start among the resources (after 6 BARs and the ROM).
const IOV_RESOURCES: usize = 7;
/// VFs start at this routing-id offset from their PF, one apart (the simulator's addresses).
const VF_OFFSET: u16 = 4;
const VF_STRIDE: u16 = 1;
/// MSI-X vectors offered, and where their table and PBA sit in BAR0.
const MSIX_VECTORS: u16 = 6;
const MSIX_TABLE: u32 = 0x00b9_0000;
const MSIX_PBA: u32 = 0x00ba_0000;

/// A BAR placed at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub index: usize,
    pub start: u64,
    pub size: u64,
    pub io: bool,
    pub prefetchable: bool,
    pub is64: bool,
}

impl Placed {
    /// The resource flags the kernel prints: IORESOURCE_* bits plus the BAR's own low bits.
    fn flags(&self) -> u64 {
        const SIZEALIGN: u64 = 0x4_0000;
        if self.io {
            return SIZEALIGN | 0x100 | 0x1;
        }
        let mut f = SIZEALIGN | 0x200;
        if self.prefetchable {
            f |= 0x2000 | 0x8;
        }
        if self.is64 {
            f |= 0x10_0000 | 0x4;
        }
        f
    }

    /// The low bits of the BAR register: space, type and prefetchable.
    fn register_bits(&self) -> u32 {
        (self.flags() & 0xf) as u32
    }
}

/// `(domain, bus, device, function)` of a `dddd:bb:dd.f` name.
fn address(name: &str) -> Option<(u32, u32, u32, u32)> {
    let (domain, rest) = name.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    Some((hex(domain)?, hex(bus)?, hex(dev)?, hex(func)?))
}

/// The BAR layout of a function: the profile's guest layout (its vGPUs mirror the GPU).
fn layout(p: &Parent) -> &[GuestBar] {
    &p.template.guest.bars
}

/// Places `bars` in this function's windows: 64-bit BARs in a 128 GiB window of its own,
/// 32-bit memory in one of seven 256 MiB windows below 4 GiB (hosts with many GPUs reuse
/// them, which nothing here checks), I/O in a 256-byte window.
/// `copies` of a BAR lie back to back (the VF BAR regions of an SR-IOV PF).
fn place(name: &str, bars: &[(&GuestBar, u64)]) -> Vec<Placed> {
    let (domain, bus, dev, func) = address(name).unwrap_or_default();
    let key = u64::from((domain << 16) | (bus << 8) | (dev << 3) | func);
    let mut next64 = (1u64 << 46) + (key << 37);
    let mut next32 = 0x8000_0000 + (key % 7) * 0x1000_0000;
    let mut next_io = 0x1000 + (key % 0xe0) * 0x100;
    let mut placed = Vec::new();
    for &(bar, copies) in bars {
        let size = bar
            .size
            .max(if bar.io { 4 } else { 16 })
            .next_power_of_two();
        let total = size * copies;
        let cursor = if bar.io {
            &mut next_io
        } else if bar.is64 {
            &mut next64
        } else {
            &mut next32
        };
        let start = cursor.next_multiple_of(size);
        *cursor = start + total;
        placed.push(Placed {
            index: usize::from(bar.index),
            start,
            size,
            io: bar.io,
            prefetchable: bar.prefetchable,
            is64: bar.is64,
        });
    }
    placed
}

/// The function's own BARs and, on a PF with VFs, the VF BAR regions (one BAR per VF each).
fn bars_of(k_pf: Option<&Parent>, p: &Parent) -> (Vec<Placed>, Vec<Placed>) {
    let pci = p.pci.as_ref();
    match (pci.and_then(|x| x.physfn.as_ref()), k_pf) {
        (Some(_), Some(pf)) => {
            // A VF: its slice of the PF's VF BAR regions.
            let n = pf
                .pci
                .as_ref()
                .and_then(|x| x.virtfns.iter().position(|v| *v == p.name))
                .unwrap_or(0) as u64;
            let (_, iov) = bars_of(None, pf);
            let own = iov
                .into_iter()
                .map(|b| Placed {
                    start: b.start + n * b.size,
                    ..b
                })
                .collect();
            (own, Vec::new())
        }
        _ => {
            let vfs = pci.map_or(0, |x| x.virtfns.len()) as u64;
            let own = layout(p).iter().map(|b| (b, 1));
            // The VF regions follow the PF's own BARs in the same windows.
            let iov = layout(p).iter().filter(|_| vfs > 0).map(|b| (b, vfs));
            let all: Vec<(&GuestBar, u64)> = own.chain(iov).collect();
            let mut placed = place(&p.name, &all);
            let iov = placed.split_off(layout(p).len());
            (placed, iov)
        }
    }
}

/// `resource`: one `0x<start> 0x<end> 0x<flags>` line per resource, zeros where none.
pub fn resource(pf: Option<&Parent>, p: &Parent) -> String {
    let (own, iov) = bars_of(pf, p);
    let mut lines = vec![(0u64, 0u64, 0u64); RESOURCE_LINES];
    for b in &own {
        lines[b.index] = (b.start, b.start + b.size - 1, b.flags());
    }
    for b in &iov {
        let total = b.size * p.pci.as_ref().map_or(0, |x| x.virtfns.len()) as u64;
        lines[IOV_RESOURCES + b.index] = (b.start, b.start + total - 1, b.flags());
    }
    lines
        .iter()
        .map(|(s, e, f)| format!("0x{s:016x} 0x{e:016x} 0x{f:016x}\n"))
        .collect()
}

struct Space(Vec<u8>);

impl Space {
    fn u8(&mut self, at: usize, v: u8) {
        self.0[at] = v;
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// A standard capability header; `next` 0 ends the list.
    fn cap(&mut self, at: usize, id: u8, next: usize) {
        self.u8(at, id);
        self.u8(at + 1, next as u8);
    }
}

/// Writes BAR registers at `base` (0x10 for the header, +0x24 in the SR-IOV capability).
fn bar_registers(s: &mut Space, base: usize, bars: &[Placed]) {
    for b in bars {
        let at = base + 4 * b.index;
        s.u32(at, (b.start as u32 & !0xf) | b.register_bits());
        if b.is64 && b.index < 5 {
            s.u32(at + 4, (b.start >> 32) as u32);
        }
    }
}

/// `config` of a PCI function. `pf` is the physical function of a VF.
pub fn config(pf: Option<&Parent>, p: &Parent, pci: &PciInfo) -> Vec<u8> {
    let express = p.template.pcie;
    let len = if express {
        CONFIG_LEN_EXPRESS
    } else {
        CONFIG_LEN
    };
    let mut s = Space(vec![0; len]);
    let is_vf = pci.physfn.is_some();
    let (own, iov) = bars_of(pf, p);
    // A VF's vendor and device read all ones; software takes them from the PF.
    s.u16(0x00, if is_vf { 0xffff } else { pci.vendor });
    s.u16(0x02, if is_vf { 0xffff } else { pci.device });
    let io = own.iter().any(|b| b.io);
    s.u16(
        0x04,
        if is_vf {
            0x0000
        } else {
            0x0006 | u16::from(io)
        },
    );
    s.u16(0x06, 0x0010); // the capability list is valid
    s.u8(0x08, 0xa1);
    s.u8(0x09, pci.class as u8);
    s.u8(0x0a, (pci.class >> 8) as u8);
    s.u8(0x0b, (pci.class >> 16) as u8);
    if !is_vf {
        bar_registers(&mut s, 0x10, &own);
    }
    s.u16(0x2c, pci.subsystem_vendor);
    s.u16(0x2e, pci.subsystem_device);
    s.u8(0x34, 0x60);
    s.u8(0x3c, if is_vf { 0 } else { 0x0b });
    s.u8(0x3d, if is_vf { 0 } else { 1 }); // INTA#

    // 0x60 power management, 0x68 MSI (64-bit), 0x78 PCI Express, 0xb4 MSI-X.
    s.cap(0x60, 0x01, 0x68);
    s.u16(0x62, 0x0003);
    s.cap(0x68, 0x05, if express { 0x78 } else { 0xb4 });
    s.u16(0x6a, 0x0080);
    if express {
        s.cap(0x78, 0x10, 0xb4);
        s.u16(0x7a, 0x0002); // version 2, endpoint
        s.u32(0x7c, 0x1000_8fe1); // max payload 256, role-based error reporting, FLR
        s.u16(0x80, 0x2810); // max payload/read request
        s.u32(0x84, 0x0000_0103 | (16 << 4)); // link: 8 GT/s, x16
        s.u16(0x8a, 0x0003 | (16 << 4)); // link status: 8 GT/s, x16
        s.u32(0x98, 0x0000_0010); // device capabilities 2: completion timeout disable
        s.u32(0xa4, 0x0000_000e); // link capabilities 2: 2.5, 5 and 8 GT/s
    }
    s.cap(0xb4, 0x11, 0);
    s.u16(0xb6, MSIX_VECTORS - 1);
    s.u32(0xb8, MSIX_TABLE);
    s.u32(0xbc, MSIX_PBA);

    if express && !iov.is_empty() {
        sriov(&mut s, p, pci, &iov);
    }
    s.0
}

/// The SR-IOV extended capability at 0x100 (the only one: next offset 0).
fn sriov(s: &mut Space, p: &Parent, pci: &PciInfo, iov: &[Placed]) {
    let total = p.template.vfs.max(pci.virtfns.len() as u32) as u16;
    let enabled = pci.virtfns.len() as u16;
    s.u32(0x100, 0x0010 | (1 << 16));
    s.u32(0x104, 0); // capabilities
    s.u16(0x108, if enabled > 0 { 0x0009 } else { 0 }); // VF enable, VF memory space enable
    s.u16(0x10c, total); // initial VFs
    s.u16(0x10e, total); // total VFs
    s.u16(0x110, enabled); // num VFs
    s.u16(0x114, VF_OFFSET);
    s.u16(0x116, VF_STRIDE);
    s.u16(0x11a, p.template.vf_device.unwrap_or(pci.device));
    s.u32(0x11c, 0x0000_0553); // supported page sizes
    s.u32(0x120, 0x0000_0001); // system page size: 4 KiB
    bar_registers(s, 0x124, iov);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(index: u8, size: u64, prefetchable: bool, is64: bool) -> GuestBar {
        GuestBar {
            index,
            size,
            io: false,
            prefetchable,
            is64,
        }
    }

    #[test]
    fn bars_are_aligned_to_their_size() {
        let (b0, b1) = (
            bar(0, 16 << 20, false, false),
            bar(1, 256 << 20, true, true),
        );
        let placed = place("0000:20:00.0", &[(&b0, 1), (&b1, 1)]);
        for b in &placed {
            assert_eq!(b.start % b.size, 0, "{b:?}");
        }
        assert!(placed[0].start + placed[0].size <= 1 << 32);
    }

    #[test]
    fn flags_are_the_kernel_s() {
        let p = place("0000:20:00.0", &[(&bar(1, 1 << 28, true, true), 1)])[0];
        assert_eq!(p.flags(), 0x14220c);
        let p = place("0000:20:00.0", &[(&bar(0, 1 << 24, false, false), 1)])[0];
        assert_eq!(p.flags(), 0x40200);
    }

    #[test]
    fn different_functions_get_different_64_bit_windows() {
        let a = place("0000:20:00.0", &[(&bar(1, 1 << 28, true, true), 1)])[0];
        let b = place("0000:21:00.0", &[(&bar(1, 1 << 28, true, true), 1)])[0];
        assert_ne!(a.start, b.start);
    }
}
