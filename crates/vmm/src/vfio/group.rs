//! The VFIO group API over raw ioctls (linux/vfio.h), on descriptors someone else opened:
//! vgpud opens /dev/vfio/vfio and /dev/vfio/<group> and passes them, so a jailed VMM never
//! names a /dev path (vfio-ioctls 0.10's container and group open theirs by path). A container
//! with type1v2 IOMMU and guest RAM mapped, its groups, and their devices' regions and IRQs.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};

use vfio_ioctls::{VfioRegionInfoCap, VfioRegionInfoCapSparseMmap, VfioRegionSparseMmapArea};
use vmm_sys_util::eventfd::EventFd;

use super::DeviceFd;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: every VFIO ioctl is an `_IO` number (no size encoded).
const fn vfio_io(nr: libc::c_ulong) -> libc::c_ulong {
    ((b';' as libc::c_ulong) << 8) | (100 + nr)
}
const GET_API_VERSION: libc::c_ulong = vfio_io(0);
const CHECK_EXTENSION: libc::c_ulong = vfio_io(1);
const SET_IOMMU: libc::c_ulong = vfio_io(2);
const GROUP_GET_STATUS: libc::c_ulong = vfio_io(3);
const GROUP_SET_CONTAINER: libc::c_ulong = vfio_io(4);
const GROUP_GET_DEVICE_FD: libc::c_ulong = vfio_io(6);
const DEVICE_GET_INFO: libc::c_ulong = vfio_io(7);
const DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
const DEVICE_GET_IRQ_INFO: libc::c_ulong = vfio_io(9);
const DEVICE_SET_IRQS: libc::c_ulong = vfio_io(10);
const IOMMU_MAP_DMA: libc::c_ulong = vfio_io(13);

const API_VERSION: libc::c_int = 0;
const TYPE1V2_IOMMU: libc::c_ulong = 3;
const GROUP_FLAGS_VIABLE: u32 = 1;
const DMA_MAP_READ_WRITE: u32 = 0b11;
const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;
const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
const IRQ_SET_DATA_NONE: u32 = 1 << 0;
const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
    cap_offset: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

/// `struct vfio_irq_set` with room for four eventfds after it.
#[repr(C)]
#[derive(Default)]
struct IrqSet {
    argsz: u32,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    fds: [i32; 4],
}

fn ioctl_status(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A VFIO container (/dev/vfio/vfio as vgpud opened it) and the groups attached to it.
pub struct Container {
    file: File,
    /// By the group node's device number, so a group is attached once.
    groups: HashMap<u64, File>,
}

impl Container {
    /// Checks the API version and that the type1v2 IOMMU is offered.
    pub fn new(file: File) -> io::Result<Self> {
        // SAFETY: VFIO_GET_API_VERSION takes no argument and only returns a number.
        let version = ioctl_status(unsafe { libc::ioctl(file.as_raw_fd(), GET_API_VERSION) })?;
        // SAFETY: VFIO_CHECK_EXTENSION takes an integer by value and only returns a number.
        let type1v2 =
            ioctl_status(unsafe { libc::ioctl(file.as_raw_fd(), CHECK_EXTENSION, TYPE1V2_IOMMU) })?;
        if version != API_VERSION || type1v2 != 1 {
            return Err(io::Error::other(format!(
                "not a VFIO container with type1v2 (API {version}, type1v2 {type1v2})"
            )));
        }
        Ok(Self {
            file,
            groups: HashMap::new(),
        })
    }

    /// Attaches `group` (once: a second descriptor of the same group is dropped) and returns
    /// the descriptor the group is known by; the first group sets the IOMMU type.
    pub fn attach(&mut self, group: File) -> io::Result<RawFd> {
        let rdev = group.metadata()?.rdev();
        if let Some(g) = self.groups.get(&rdev) {
            return Ok(g.as_raw_fd());
        }
        let mut status = GroupStatus {
            argsz: std::mem::size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        // SAFETY: the kernel writes at most `argsz` bytes into `status`, which lives across the call.
        ioctl_status(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_GET_STATUS, &mut status) })?;
        if status.flags & GROUP_FLAGS_VIABLE == 0 {
            return Err(io::Error::other(
                "VFIO group is not viable (bind every device of the group to VFIO)",
            ));
        }
        let container = self.file.as_raw_fd();
        // SAFETY: the kernel reads one int (the container fd) from the pointer.
        ioctl_status(unsafe { libc::ioctl(group.as_raw_fd(), GROUP_SET_CONTAINER, &container) })?;
        if self.groups.is_empty() {
            // SAFETY: VFIO_SET_IOMMU takes the IOMMU type by value.
            ioctl_status(unsafe { libc::ioctl(container, SET_IOMMU, TYPE1V2_IOMMU) })?;
        }
        let fd = group.as_raw_fd();
        self.groups.insert(rdev, group);
        Ok(fd)
    }

    /// Maps `size` bytes at `host` for the devices' DMA at I/O address `iova`.
    ///
    /// # Safety
    /// `host..host + size` must stay mapped for as long as the container lives; the devices
    /// read and write it behind the program's back.
    pub unsafe fn map_dma(&self, iova: u64, size: u64, host: u64) -> io::Result<()> {
        let map = DmaMap {
            argsz: std::mem::size_of::<DmaMap>() as u32,
            flags: DMA_MAP_READ_WRITE,
            vaddr: host,
            iova,
            size,
        };
        // SAFETY: the kernel reads `map`; the caller keeps the memory mapped (see above).
        ioctl_status(unsafe { libc::ioctl(self.file.as_raw_fd(), IOMMU_MAP_DMA, &map) })?;
        Ok(())
    }
}

/// One device of a group (VFIO_GROUP_GET_DEVICE_FD), with its regions and IRQ infos.
pub struct GroupDevice {
    file: File,
    regions: Vec<(RegionInfo, Vec<VfioRegionInfoCap>)>,
    irqs: Vec<IrqInfo>,
}

impl GroupDevice {
    /// The device `name` (an mdev's UUID, a PCI function's address) of group `group`.
    pub fn open(group: RawFd, name: &str) -> io::Result<Self> {
        let name = CString::new(name).map_err(|_| io::Error::other("bad device name"))?;
        // SAFETY: the kernel reads the NUL-terminated name; it returns a new descriptor.
        let fd = ioctl_status(unsafe { libc::ioctl(group, GROUP_GET_DEVICE_FD, name.as_ptr()) })?;
        // SAFETY: `fd` was just returned to us and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut info = DeviceInfo {
            argsz: std::mem::size_of::<DeviceInfo>() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most `argsz` bytes into `info`.
        ioctl_status(unsafe { libc::ioctl(file.as_raw_fd(), DEVICE_GET_INFO, &mut info) })?;
        // A region or IRQ index the device does not answer for (mtty's, in part) is left
        // empty, as vfio-ioctls does: size 0, count 0.
        let regions = (0..info.num_regions)
            .map(|i| region_info(&file, i).unwrap_or_default())
            .collect();
        let irqs = (0..info.num_irqs)
            .map(|index| {
                let mut irq = IrqInfo {
                    argsz: std::mem::size_of::<IrqInfo>() as u32,
                    index,
                    ..Default::default()
                };
                // SAFETY: the kernel writes at most `argsz` bytes into `irq`.
                let rc = unsafe { libc::ioctl(file.as_raw_fd(), DEVICE_GET_IRQ_INFO, &mut irq) };
                if rc < 0 {
                    irq.count = 0;
                }
                irq
            })
            .collect();
        Ok(Self {
            file,
            regions,
            irqs,
        })
    }

    fn region(&self, index: u32) -> Option<&(RegionInfo, Vec<VfioRegionInfoCap>)> {
        self.regions.get(index as usize)
    }

    fn set_irqs(&self, index: u32, flags: u32, fds: &[&EventFd]) -> io::Result<()> {
        let mut set = IrqSet {
            argsz: (std::mem::size_of::<IrqSet>() - 4 * (4 - fds.len().min(4))) as u32,
            flags,
            index,
            start: 0,
            count: fds.len().min(4) as u32,
            fds: [-1; 4],
        };
        if fds.len() > 4 {
            return Err(io::Error::other("more than four eventfds"));
        }
        for (slot, fd) in set.fds.iter_mut().zip(fds) {
            *slot = fd.as_raw_fd();
        }
        // SAFETY: the kernel reads `argsz` bytes of `set`: the header and `count` fds.
        ioctl_status(unsafe { libc::ioctl(self.file.as_raw_fd(), DEVICE_SET_IRQS, &set) })?;
        Ok(())
    }
}

/// VFIO_DEVICE_GET_REGION_INFO of region `index`, with its sparse-mmap capability if any.
fn region_info(file: &File, index: u32) -> io::Result<(RegionInfo, Vec<VfioRegionInfoCap>)> {
    let head = std::mem::size_of::<RegionInfo>();
    let mut buf = vec![0u64; head / 8];
    loop {
        let argsz = buf.len() * 8;
        let mut info = RegionInfo {
            argsz: argsz as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `buf` is `argsz` bytes, 8-aligned, and starts as a `RegionInfo`; the kernel
        // writes at most `argsz` bytes into it.
        unsafe {
            std::ptr::copy_nonoverlapping(&info, buf.as_mut_ptr().cast::<RegionInfo>(), 1);
            ioctl_status(libc::ioctl(
                file.as_raw_fd(),
                DEVICE_GET_REGION_INFO,
                buf.as_mut_ptr(),
            ))?;
            info = std::ptr::read(buf.as_ptr().cast::<RegionInfo>());
        }
        // A chain longer than a page is not one this VMM reads (sparse mmap takes 16 bytes
        // an area): the region counts as one with holes, so it is trapped, never mapped.
        let wanted = info.argsz as usize;
        if info.flags & REGION_INFO_FLAG_CAPS != 0 && wanted > 4096 {
            let holes = VfioRegionInfoCapSparseMmap { areas: Vec::new() };
            return Ok((info, vec![VfioRegionInfoCap::SparseMmap(holes)]));
        }
        if info.flags & REGION_INFO_FLAG_CAPS == 0 || wanted <= argsz {
            let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let caps = match info.flags & REGION_INFO_FLAG_CAPS {
                0 => Vec::new(),
                _ => sparse_caps(&bytes, info.cap_offset as usize),
            };
            return Ok((info, caps));
        }
        buf.resize(wanted.div_ceil(8), 0);
    }
}

/// The sparse-mmap capabilities in a region info's capability chain starting at `offset`
/// (`struct vfio_info_cap_header`: id, version, next; then the capability's body).
pub fn sparse_caps(info: &[u8], mut offset: usize) -> Vec<VfioRegionInfoCap> {
    let u16_at = |o: usize| info.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        info.get(o..o + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        let lo = u64::from(u32_at(o)?);
        Some(lo | u64::from(u32_at(o + 4)?) << 32)
    };
    let mut caps = Vec::new();
    // A chain is a handful of entries; the bound stops a looping one.
    for _ in 0..16 {
        if offset == 0 {
            break;
        }
        let (Some(id), Some(next)) = (u16_at(offset), u32_at(offset + 4)) else {
            break;
        };
        if id == REGION_INFO_CAP_SPARSE_MMAP {
            let count = u32_at(offset + 8).unwrap_or(0) as usize;
            let areas = (0..count.min(64))
                .map_while(|i| {
                    let at = offset + 16 + 16 * i;
                    Some(VfioRegionSparseMmapArea {
                        offset: u64_at(at)?,
                        size: u64_at(at + 8)?,
                    })
                })
                .collect();
            caps.push(VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
                areas,
            }));
        }
        offset = next as usize;
    }
    caps
}

impl DeviceFd for GroupDevice {
    fn region_read(&self, index: u32, buf: &mut [u8], offset: u64) {
        let Some((r, _)) = self.region(index) else {
            return buf.fill(0xff);
        };
        if offset + buf.len() as u64 > r.size
            || self.file.read_exact_at(buf, r.offset + offset).is_err()
        {
            buf.fill(0xff);
        }
    }

    fn region_write(&self, index: u32, buf: &[u8], offset: u64) {
        let Some((r, _)) = self.region(index) else {
            return;
        };
        if offset + buf.len() as u64 <= r.size {
            if let Err(e) = self.file.write_all_at(buf, r.offset + offset) {
                tracing::warn!("VFIO region {index} write at {offset:#x} failed: {e}");
            }
        }
    }

    fn region_size(&self, index: u32) -> u64 {
        self.region(index).map_or(0, |(r, _)| r.size)
    }

    fn region_flags(&self, index: u32) -> u32 {
        self.region(index).map_or(0, |(r, _)| r.flags)
    }

    fn region_offset(&self, index: u32) -> u64 {
        self.region(index).map_or(0, |(r, _)| r.offset)
    }

    fn region_caps(&self, index: u32) -> Vec<VfioRegionInfoCap> {
        self.region(index)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    fn irq(&self, index: u32) -> Option<(u32, u32)> {
        self.irqs.get(index as usize).map(|i| (i.count, i.flags))
    }

    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> io::Result<()> {
        self.set_irqs(index, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER, fds)
    }

    fn set_irq_resample(&self, index: u32, fds: &[&EventFd]) -> io::Result<()> {
        self.set_irqs(index, IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_UNMASK, fds)
    }

    fn unmask_irq(&self, index: u32) -> io::Result<()> {
        // DATA_NONE with count 1: the header alone, no data.
        let set = IrqSet {
            argsz: (std::mem::size_of::<IrqSet>() - 4 * 4) as u32,
            flags: IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK,
            index,
            start: 0,
            count: 1,
            fds: [-1; 4],
        };
        // SAFETY: the kernel reads `argsz` bytes of `set`: the header only.
        ioctl_status(unsafe { libc::ioctl(self.file.as_raw_fd(), DEVICE_SET_IRQS, &set) })?;
        Ok(())
    }

    fn disable_irq(&self, index: u32) -> io::Result<()> {
        self.set_irqs(index, IRQ_SET_DATA_NONE | IRQ_SET_ACTION_TRIGGER, &[])
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_linux_vfio_h() {
        // _IO(';', 100) = 0x3b64, ... VFIO_IOMMU_MAP_DMA = _IO(';', 113).
        assert_eq!(GET_API_VERSION, 0x3b64);
        assert_eq!(GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(IOMMU_MAP_DMA, 0x3b71);
    }

    #[test]
    fn structs_have_the_kernel_sizes() {
        use std::mem::size_of;
        assert_eq!(size_of::<GroupStatus>(), 8);
        assert_eq!(size_of::<DmaMap>(), 32);
        assert_eq!(size_of::<DeviceInfo>(), 24);
        assert_eq!(size_of::<RegionInfo>(), 32);
        assert_eq!(size_of::<IrqInfo>(), 16);
        assert_eq!(size_of::<IrqSet>(), 20 + 16);
    }

    fn cap(id: u16, next: u32, body: &[u8]) -> Vec<u8> {
        let mut v = id.to_ne_bytes().to_vec();
        v.extend(1u16.to_ne_bytes());
        v.extend(next.to_ne_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn sparse_mmap_areas_are_read_from_the_chain() {
        let mut info = vec![0u8; 32];
        // An unknown capability at 32 pointing at a sparse-mmap one at 40 with two areas.
        info.extend(cap(9, 40, &[]));
        let mut body = 2u32.to_ne_bytes().to_vec();
        body.extend(0u32.to_ne_bytes());
        for (o, s) in [(0u64, 0x1000u64), (0x2000, 0xe000)] {
            body.extend(o.to_ne_bytes());
            body.extend(s.to_ne_bytes());
        }
        info.extend(cap(REGION_INFO_CAP_SPARSE_MMAP, 0, &body));
        let caps = sparse_caps(&info, 32);
        let [VfioRegionInfoCap::SparseMmap(s)] = caps.as_slice() else {
            panic!("one sparse-mmap capability expected")
        };
        let areas: Vec<(u64, u64)> = s.areas.iter().map(|a| (a.offset, a.size)).collect();
        assert_eq!(areas, [(0, 0x1000), (0x2000, 0xe000)]);
    }

    #[test]
    fn a_looping_or_truncated_chain_ends() {
        let info = cap(9, 0, &[]);
        let mut looping = vec![0u8; 8];
        looping.extend(cap(9, 8, &[]));
        assert!(sparse_caps(&looping, 8).is_empty());
        assert!(sparse_caps(&info, 4).is_empty());
        assert!(sparse_caps(&info, 0).is_empty());
    }
}
