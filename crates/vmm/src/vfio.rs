//! The VFIO implementation of the passthrough seam: the device's config region forwarded with
//! BARs virtualized (guest addresses live here, the device keeps its own), BAR accesses
//! forwarded to the device regions, guest RAM mapped for DMA, INTx through an eventfd that
//! KVM injects. Runs on the real-kernel tier (tests/real_kernel_vfio.rs: mtty, mdpy, mbochs);
//! the pure helpers are unit-tested here.

use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioDevice, VfioOps, VfioRegionInfoCap};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod context;
mod group;

pub use context::VfioContext;

use super::description::GuestBar;
use super::device::PassthroughDevice;
use super::interrupts::{MessageInterrupts, Switched};
use super::msi::{Msi, MsiChange, MsiMessage, CAP_ID_MSI};
use super::msix::{Msix, CAP_ID_MSIX};
use super::pci::{find_capability, BarRegion, Bars, COMMAND_IO, COMMAND_MEMORY};
use super::seams::RamBar;

/// vfio-pci region indexes: BARs 0..=5, then ROM (6) and config space (7).
pub const CONFIG_REGION: u32 = 7;
pub const INTX_IRQ: u32 = 0;
const MSI_IRQ: u32 = 1;
const MSIX_IRQ: u32 = 2;
/// VFIO_IRQ_INFO_AUTOMASKED (linux/vfio.h): the device masks INTx after each interrupt.
const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
const REGION_FLAG_IO_HINT: u32 = 1 << 31; // not a kernel flag: marks IO BARs in `bar_layout`
/// VFIO_REGION_INFO_FLAG_MMAP (linux/vfio.h): the region can be mmapped from the device fd.
pub const REGION_FLAG_MMAP: u32 = 1 << 2;
const PAGE_SIZE: u64 = 4096;

/// Whether a BAR's region becomes a KVM memory slot (mmapped from the device fd) or traps.
/// Only a region that is mmappable as a whole (no sparse-mmap capability, or one sparse area
/// covering it) and page-sized is mapped; a region with holes (an MSI-X table inside, say)
/// stays trapped so the VMM sees every access.
pub fn maps_whole(flags: u32, size: u64, caps: &[VfioRegionInfoCap]) -> bool {
    if flags & REGION_FLAG_MMAP == 0 || size == 0 || size % PAGE_SIZE != 0 {
        return false;
    }
    caps.iter().all(|cap| match cap {
        VfioRegionInfoCap::SparseMmap(sparse) => {
            sparse.areas.len() == 1 && sparse.areas[0].offset == 0 && sparse.areas[0].size >= size
        }
        _ => true,
    })
}

/// A BAR region mmapped from the device fd; unmapped on drop.
struct MappedBar {
    index: usize,
    addr: *mut libc::c_void,
    size: u64,
}

// SAFETY: the mapping is plain shared memory of the device; the pointer is only handed to
// KVM (which accesses it on the guest's behalf) and unmapped on drop.
unsafe impl Send for MappedBar {}

impl Drop for MappedBar {
    fn drop(&mut self) {
        // SAFETY: `addr`/`size` are exactly what mmap returned; nothing uses it after drop.
        unsafe { libc::munmap(self.addr, self.size as usize) };
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    #[error("no VFIO device at {0}: the path must be /sys/bus/mdev/devices/<uuid>, /sys/bus/pci/devices/<address> or a directory under /sys/devices")]
    NotADevice(PathBuf),
    #[error(
        "VFIO is not available on this host (no /dev/vfio/vfio); load vfio and vfio_iommu_type1"
    )]
    NoVfio,
    #[error("VFIO setup failed at {0}")]
    Setup(&'static str, #[source] vfio_ioctls::VfioError),
    #[error("VFIO setup failed at {0}")]
    Group(&'static str, #[source] std::io::Error),
    #[error("{0} has no IOMMU group")]
    NoGroup(PathBuf),
    #[error("cannot open {0}")]
    Open(String, #[source] std::io::Error),
    #[error("KVM-VFIO device cannot be created")]
    KvmDevice(#[source] kvm_ioctls::Error),
    #[error("guest memory has no host mapping")]
    GuestMemory,
    #[error("cannot use the iommufd")]
    Iommufd(#[source] std::io::Error),
    #[error("a guest takes its VFIO devices all by group or all by cdev, not both")]
    MixedApis,
    #[error("eventfd for INTx cannot be created")]
    EventFd(#[source] std::io::Error),
    #[error("device BARs are not a valid layout")]
    Bars(#[from] super::pci::BarError),
}

/// Accepts the sysfs forms a vGPU comes as: an mdev or a PCI function (an NVIDIA vendor-sysfs
/// VF bound to vfio-pci) by its bus link, or the device's own directory under /sys/devices
/// (what the daemon knows a live device by, e.g. /sys/devices/virtual/mtty/mtty/<uuid>).
pub fn check_sysfs_path(path: &Path) -> Result<(), VfioError> {
    let s = path.to_string_lossy();
    let by_bus = ["/sys/bus/mdev/devices/", "/sys/bus/pci/devices/"]
        .iter()
        .any(|prefix| {
            s.starts_with(prefix) && s.len() > prefix.len() && !s[prefix.len()..].contains('/')
        });
    let own_dir = s.starts_with("/sys/devices/")
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if by_bus || own_dir {
        Ok(())
    } else {
        Err(VfioError::NotADevice(path.to_owned()))
    }
}

/// BAR layout from the device's region flags and sizes (as VFIO_DEVICE_GET_REGION_INFO
/// gives them) and the BAR registers read from its config space, which carry the type bits.
pub fn bar_layout(regions: &[(u64, u32)], bar_regs: &[u32; 6]) -> Vec<GuestBar> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < 6 {
        let (size, flags) = regions.get(i).copied().unwrap_or((0, 0));
        let reg = bar_regs[i];
        if size == 0 {
            i += 1;
            continue;
        }
        let io = reg & 1 == 1 || flags & REGION_FLAG_IO_HINT != 0;
        let is64 = !io && (reg >> 1) & 3 == 2;
        out.push(GuestBar {
            index: i as u8,
            size: size.next_power_of_two(),
            io,
            prefetchable: !io && reg & 8 != 0,
            is64,
        });
        i += if is64 { 2 } else { 1 };
    }
    out
}

/// Whether a config access at `offset` is virtualized here instead of going to the device.
pub fn is_virtualized(offset: u16) -> bool {
    (0x10..0x28).contains(&offset)
        || (0x30..0x34).contains(&offset)
        || (0x3c..0x3d).contains(&offset)
}

/// What `VfioPassthrough` asks of a VFIO device descriptor: regions and interrupts. Two
/// implementations: vfio-ioctls' `VfioDevice` (a cdev bound to an iommufd) and
/// `group::GroupDevice` (a device of a group, by our own ioctls on descriptors vgpud passed).
pub trait DeviceFd: Send {
    fn region_read(&self, index: u32, buf: &mut [u8], offset: u64);
    fn region_write(&self, index: u32, buf: &[u8], offset: u64);
    fn region_size(&self, index: u32) -> u64;
    fn region_flags(&self, index: u32) -> u32;
    fn region_offset(&self, index: u32) -> u64;
    fn region_caps(&self, index: u32) -> Vec<VfioRegionInfoCap>;
    /// Count and flags of IRQ index `index`, where the device has it.
    fn irq(&self, index: u32) -> Option<(u32, u32)>;
    /// VFIO_DEVICE_SET_IRQS: `fds` signal the interrupts of `index`.
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> std::io::Result<()>;
    /// VFIO_DEVICE_SET_IRQS: a signal on `fds` unmasks `index` (an automasked INTx).
    fn set_irq_resample(&self, index: u32, fds: &[&EventFd]) -> std::io::Result<()>;
    /// VFIO_DEVICE_SET_IRQS: unmask `index` now.
    fn unmask_irq(&self, index: u32) -> std::io::Result<()>;
    fn disable_irq(&self, index: u32) -> std::io::Result<()>;
    fn raw_fd(&self) -> RawFd;
}

fn io_error(e: vfio_ioctls::VfioError) -> std::io::Error {
    std::io::Error::other(e)
}

impl DeviceFd for VfioDevice {
    fn region_read(&self, index: u32, buf: &mut [u8], offset: u64) {
        VfioDevice::region_read(self, index, buf, offset)
    }
    fn region_write(&self, index: u32, buf: &[u8], offset: u64) {
        VfioDevice::region_write(self, index, buf, offset)
    }
    fn region_size(&self, index: u32) -> u64 {
        self.get_region_size(index)
    }
    fn region_flags(&self, index: u32) -> u32 {
        self.get_region_flags(index)
    }
    fn region_offset(&self, index: u32) -> u64 {
        self.get_region_offset(index)
    }
    fn region_caps(&self, index: u32) -> Vec<VfioRegionInfoCap> {
        self.get_region_caps(index)
    }
    fn irq(&self, index: u32) -> Option<(u32, u32)> {
        self.get_irq_info(index).map(|i| (i.count, i.flags))
    }
    fn enable_irq(&self, index: u32, fds: &[&EventFd]) -> std::io::Result<()> {
        VfioDevice::enable_irq(self, index, fds.to_vec()).map_err(io_error)
    }
    fn set_irq_resample(&self, index: u32, fds: &[&EventFd]) -> std::io::Result<()> {
        self.set_irq_resample_fd(index, fds.to_vec())
            .map_err(io_error)
    }
    fn unmask_irq(&self, index: u32) -> std::io::Result<()> {
        VfioDevice::unmask_irq(self, index).map_err(io_error)
    }
    fn disable_irq(&self, index: u32) -> std::io::Result<()> {
        VfioDevice::disable_irq(self, index).map_err(io_error)
    }
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

/// The group of the device at sysfs `path` (its `iommu_group` link's name).
fn group_id(path: &Path) -> Result<u32, VfioError> {
    std::fs::read_link(path.join("iommu_group"))
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse().ok())
        .ok_or_else(|| VfioError::NoGroup(path.to_owned()))
}

fn open_rw(path: &str) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// VFIO passthrough of an mdev or a PCI function.
pub struct VfioPassthrough {
    device: Box<dyn DeviceFd>,
    /// The iommufd a cdev is bound to, kept as long as the device.
    _ops: Option<Arc<dyn VfioOps>>,
    /// How messages name it: its sysfs path, or `cdev fd:N`.
    name: String,
    bars: Bars,
    virtual_bars: Bars,
    command: u16,
    interrupt_line: u8,
    irq: Option<EventFd>,
    irq_resample: Option<EventFd>,
    /// The device masks INTx after each interrupt but cannot be unmasked by `irq_resample`
    /// (6.9+'s mtty: VFIO_IRQ_SET_ACTION_UNMASK by eventfd is ENOTTY): the VMM unmasks it.
    unmask_on_access: bool,
    /// MSI and MSI-X as the guest sees them: vfio-pci programs the real capabilities on
    /// VFIO_DEVICE_SET_IRQS; the guest's values only say where KVM routes `msi_irq`.
    interrupts: MessageInterrupts,
    msi_irq: EventFd,
    mapped: Vec<MappedBar>,
}

impl VfioPassthrough {
    /// Opens the device by its sysfs path, its group and the container by their /dev paths
    /// (a VMM run by hand; vgpud passes descriptors, see `open_group`).
    pub fn open(
        path: &Path,
        context: &mut Option<VfioContext>,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, VfioError> {
        check_sysfs_path(path)?;
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(VfioError::NoVfio);
        }
        let node = format!("/dev/vfio/{}", group_id(path)?);
        let group = open_rw(&node).map_err(|e| VfioError::Open(node, e))?;
        let container = || open_rw("/dev/vfio/vfio");
        Self::open_group(group, path, container, context, vm, mem)
    }

    /// Opens device `dir` (its sysfs directory, which names it: an mdev's UUID, a PCI
    /// address) of `group` (/dev/vfio/<group> as vgpud opened it), attaching the group to the
    /// guest's container (`container` opens it with the first device) and telling KVM about
    /// it; maps guest RAM for DMA, enables INTx where the device has it.
    pub fn open_group(
        group: File,
        dir: &Path,
        container: impl FnOnce() -> std::io::Result<File>,
        context: &mut Option<VfioContext>,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, VfioError> {
        check_sysfs_path(dir)?;
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| VfioError::NotADevice(dir.to_owned()))?;
        let context = match context {
            Some(c) => c,
            None => {
                let file = container().map_err(|e| VfioError::Group("container", e))?;
                context.insert(VfioContext::with_container(vm, file)?)
            }
        };
        let group = context.attach_group(group)?;
        let device =
            group::GroupDevice::open(group, name).map_err(|e| VfioError::Group("device", e))?;
        context.map_ram(mem)?;
        Self::with_device(Box::new(device), None, dir.display().to_string())
    }

    /// Opens a device by its cdev (/dev/vfio/devices/vfioN as vgpud opened it), bound to the
    /// guest's iommufd (`iommufd` opens it with the first device) and attached to its IOAS.
    pub fn open_cdev(
        cdev: File,
        name: String,
        iommufd: impl FnOnce() -> std::io::Result<File>,
        context: &mut Option<VfioContext>,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, VfioError> {
        let context = match context {
            Some(c) => c,
            None => {
                let file = iommufd().map_err(VfioError::Iommufd)?;
                context.insert(VfioContext::with_iommufd(vm, file)?)
            }
        };
        let Some(vfio) = context.iommufd() else {
            return Err(VfioError::MixedApis);
        };
        let device = VfioDevice::new_from_fd(cdev, vfio.clone(), true)
            .map_err(|e| VfioError::Setup("device cdev", e))?;
        context.map_ram(mem)?;
        Self::with_device(Box::new(device), Some(vfio), name)
    }

    /// The device's BARs, interrupts, MSI and MSI-X capabilities and mmappable regions.
    fn with_device(
        device: Box<dyn DeviceFd>,
        ops: Option<Arc<dyn VfioOps>>,
        name: String,
    ) -> Result<Self, VfioError> {
        let mut regs = [0u32; 6];
        for (i, reg) in regs.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            device.region_read(CONFIG_REGION, &mut buf, 0x10 + 4 * i as u64);
            *reg = u32::from_le_bytes(buf);
        }
        let regions: Vec<(u64, u32)> = (0..6)
            .map(|i| (device.region_size(i), device.region_flags(i)))
            .collect();
        let bars = Bars::new(&bar_layout(&regions, &regs))?;
        // INTx only where the device has it: the display samples (mdpy, mbochs) report no
        // interrupts and refuse VFIO_DEVICE_SET_IRQS.
        let (irq, irq_resample, unmask_on_access) = match device.irq(INTX_IRQ) {
            Some((count, flags)) if count > 0 => {
                let irq = EventFd::new(EFD_NONBLOCK).map_err(VfioError::EventFd)?;
                device
                    .enable_irq(INTX_IRQ, &[&irq])
                    .map_err(|e| VfioError::Group("INTx", e))?;
                // An automasked INTx stays masked after each interrupt until unmasked: the
                // guest's acknowledgement does it, through KVM's resample eventfd.
                // A device that takes no unmask eventfd is unmasked by the VMM instead, on
                // the guest's next access once KVM's resample eventfd says the guest
                // acknowledged (QEMU, without that eventfd, takes any BAR access as the
                // acknowledgement). The unmask here checks that the device can be unmasked.
                let (resample, unmask_on_access) = if flags & IRQ_INFO_AUTOMASKED != 0 {
                    let fd = EventFd::new(EFD_NONBLOCK).map_err(VfioError::EventFd)?;
                    let by_vmm = match device.set_irq_resample(INTX_IRQ, &[&fd]) {
                        Ok(()) => false,
                        Err(_) => {
                            device
                                .unmask_irq(INTX_IRQ)
                                .map_err(|e| VfioError::Group("INTx unmask", e))?;
                            true
                        }
                    };
                    (Some(fd), by_vmm)
                } else {
                    (None, false)
                };
                (Some(irq), resample, unmask_on_access)
            }
            _ => (None, None, false),
        };
        let config_dword = |offset: u16| {
            let mut buf = [0u8; 4];
            device.region_read(CONFIG_REGION, &mut buf, u64::from(offset));
            u32::from_le_bytes(buf)
        };
        let msi = find_capability(config_dword, CAP_ID_MSI)
            .map(|at| Msi::from_header(at, config_dword(at)));
        let msix = find_capability(config_dword, CAP_ID_MSIX).map(|at| {
            Msix::new(
                at,
                config_dword(at),
                config_dword(at + 4),
                config_dword(at + 8),
            )
        });
        let msi_irq = EventFd::new(EFD_NONBLOCK).map_err(VfioError::EventFd)?;
        let mut mapped = Vec::new();
        // The BAR holding the MSI-X table stays trapped: the guest's table writes must reach
        // the virtual table, not the device's.
        let table_bar = msix.as_ref().map(Msix::table_bar);
        for r in bars
            .regions()
            .filter(|r| !r.io && Some(r.index) != table_bar)
        {
            let index = r.index as u32;
            let size = device.region_size(index);
            if !maps_whole(device.region_flags(index), size, &device.region_caps(index)) {
                continue;
            }
            // SAFETY: a new shared mapping of the device fd at the region's offset, as VFIO
            // documents for regions with VFIO_REGION_INFO_FLAG_MMAP; checked below.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    device.raw_fd(),
                    device.region_offset(index) as libc::off_t,
                )
            };
            if addr == libc::MAP_FAILED {
                tracing::warn!(
                    "BAR {index} of {name} cannot be mmapped; its accesses trap: {}",
                    std::io::Error::last_os_error()
                );
                continue;
            }
            mapped.push(MappedBar {
                index: r.index,
                addr,
                size,
            });
        }
        Ok(Self {
            device,
            _ops: ops,
            name,
            virtual_bars: bars.clone(),
            bars,
            command: 0,
            interrupt_line: 0,
            irq,
            irq_resample,
            unmask_on_access,
            interrupts: MessageInterrupts { msi, msix },
            msi_irq,
            mapped,
        })
    }
}

impl VfioPassthrough {
    /// Where the VMM unmasks INTx: once KVM signalled the guest's acknowledgement, before
    /// the access that may raise the next interrupt reaches the device.
    fn unmask_if_acknowledged(&self) {
        if !self.unmask_on_access {
            return;
        }
        let Some(resample) = &self.irq_resample else {
            return;
        };
        // Non-blocking: WouldBlock while the guest has not acknowledged.
        if resample.read().is_ok() {
            if let Err(e) = self.device.unmask_irq(INTX_IRQ) {
                tracing::warn!("VFIO INTx of {} cannot be unmasked: {e}", self.name);
            }
        }
    }
}

impl PassthroughDevice for VfioPassthrough {
    fn describe(&self) -> String {
        format!("VFIO {}", self.name)
    }

    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.unmask_if_acknowledged();
        if let Some(value) = self.interrupts.config_read(offset, size) {
            return value;
        }
        let dword = offset & !3;
        let value = match dword {
            0x10..=0x24 => self.virtual_bars.read(usize::from((dword - 0x10) / 4)),
            0x30 => 0, // no expansion ROM exposed
            0x3c => {
                let mut buf = [0u8; 4];
                self.device.region_read(CONFIG_REGION, &mut buf, 0x3c);
                (u32::from_le_bytes(buf) & !0xff) | u32::from(self.interrupt_line)
            }
            _ => {
                let mut buf = [0u8; 4];
                self.device
                    .region_read(CONFIG_REGION, &mut buf, u64::from(dword));
                u32::from_le_bytes(buf)
            }
        };
        super::config::extract(value, offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.unmask_if_acknowledged();
        if let Some(switched) = self.interrupts.config_write(offset, size, value) {
            let device = &self.device;
            let result = match switched {
                Switched::Msi(MsiChange::Enable) => device.enable_irq(MSI_IRQ, &[&self.msi_irq]),
                Switched::Msi(MsiChange::Disable) => device.disable_irq(MSI_IRQ),
                Switched::Msix(MsiChange::Enable) => device.enable_irq(MSIX_IRQ, &[&self.msi_irq]),
                Switched::Msix(MsiChange::Disable) => device.disable_irq(MSIX_IRQ),
                Switched::Msi(MsiChange::None) | Switched::Msix(MsiChange::None) => Ok(()),
            };
            if let Err(e) = result {
                let what = match switched {
                    Switched::Msi(_) => "MSI",
                    Switched::Msix(_) => "MSI-X",
                };
                tracing::warn!("VFIO {what} of {} cannot be switched: {e}", self.name);
            }
            return;
        }
        let dword = offset & !3;
        match dword {
            0x10..=0x24 => {
                let i = usize::from((dword - 0x10) / 4);
                let merged = super::config::merge(self.virtual_bars.read(i), offset, size, value);
                self.virtual_bars.write(i, merged);
            }
            0x30 => {}
            0x3c if offset == 0x3c => self.interrupt_line = value as u8,
            _ => {
                if dword == 4 {
                    self.command =
                        super::config::merge(u32::from(self.command), offset, size, value) as u16;
                }
                let bytes = value.to_le_bytes();
                let n = usize::from(size).min(4);
                self.device
                    .region_write(CONFIG_REGION, &bytes[..n], u64::from(offset));
            }
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        let command = self.command;
        self.virtual_bars
            .regions()
            .filter(|r| command & if r.io { COMMAND_IO } else { COMMAND_MEMORY } != 0)
            .collect()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.unmask_if_acknowledged();
        match &self.interrupts.msix {
            Some(m) if m.owns(bar, offset) => m.table_read(offset, data),
            _ => self.device.region_read(bar as u32, data, offset),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.unmask_if_acknowledged();
        match &mut self.interrupts.msix {
            Some(m) if m.owns(bar, offset) => m.table_write(offset, data),
            _ => self.device.region_write(bar as u32, data, offset),
        }
    }

    fn irq_eventfd(&self) -> Option<&EventFd> {
        self.irq.as_ref()
    }

    fn irq_resample_eventfd(&self) -> Option<&EventFd> {
        self.irq_resample.as_ref()
    }

    fn msi_eventfd(&self) -> Option<&EventFd> {
        self.interrupts.any().then_some(&self.msi_irq)
    }

    fn msi_message(&self) -> Option<MsiMessage> {
        self.interrupts.message()
    }

    fn ram_bars(&self) -> Vec<RamBar> {
        self.mapped
            .iter()
            .map(|m| RamBar {
                index: m.index,
                host_addr: m.addr as u64,
                size: m.size,
            })
            .collect()
    }

    fn bars(&self) -> &Bars {
        &self.bars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_paths_are_checked() {
        assert!(check_sysfs_path(Path::new(
            "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
        ))
        .is_ok());
        assert!(check_sysfs_path(Path::new("/sys/bus/pci/devices/0000:41:00.4")).is_ok());
        assert!(check_sysfs_path(Path::new("/sys/bus/mdev/devices/")).is_err());
        assert!(check_sysfs_path(Path::new("/dev/vfio/12")).is_err());
        assert!(check_sysfs_path(Path::new("/sys/bus/pci/devices/0000:41:00.4/../x")).is_err());
        assert!(check_sysfs_path(Path::new(
            "/sys/devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
        ))
        .is_ok());
        assert!(check_sysfs_path(Path::new("/sys/devices/../../etc")).is_err());
        assert!(
            check_sysfs_path(Path::new("/sys/devices/./x")).is_ok(),
            "`.` is dropped"
        );
    }

    #[test]
    fn layout_from_regions_keeps_64bit_pairs() {
        let regions = [
            (16 << 20, 0),
            (256 << 20, 0),
            (0, 0),
            (32 << 20, 0),
            (0, 0),
            (0x80, REGION_FLAG_IO_HINT),
        ];
        let regs = [0xfd00_0000, 0xe000_000c, 0, 0xf000_000c, 0, 0xe001];
        let bars = bar_layout(&regions, &regs);
        assert_eq!(bars.len(), 4);
        assert!(bars[1].is64 && bars[1].prefetchable && bars[1].index == 1);
        assert_eq!(bars[2].index, 3);
        assert!(bars[3].io && bars[3].size == 0x80);
        assert!(Bars::new(&bars).is_ok());
    }

    #[test]
    fn odd_region_sizes_round_up_to_power_of_two() {
        let bars = bar_layout(&[(0x3000, 0)], &[0, 0, 0, 0, 0, 0]);
        assert_eq!(bars[0].size, 0x4000);
    }

    #[test]
    fn only_whole_page_sized_mmappable_regions_become_slots() {
        use vfio_ioctls::{VfioRegionInfoCapSparseMmap, VfioRegionSparseMmapArea};
        let sparse = |areas: &[(u64, u64)]| {
            VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
                areas: areas
                    .iter()
                    .map(|&(offset, size)| VfioRegionSparseMmapArea { offset, size })
                    .collect(),
            })
        };
        let mb = 1 << 20;
        assert!(maps_whole(REGION_FLAG_MMAP | 3, 16 * mb, &[]));
        assert!(!maps_whole(3, 16 * mb, &[]), "not mmappable: trapped");
        assert!(!maps_whole(REGION_FLAG_MMAP, 0x800, &[]), "not page-sized");
        assert!(maps_whole(
            REGION_FLAG_MMAP,
            16 * mb,
            &[sparse(&[(0, 16 * mb)])]
        ));
        // An MSI-X table carved out of the BAR: two areas, trapped.
        assert!(!maps_whole(
            REGION_FLAG_MMAP,
            16 * mb,
            &[sparse(&[(0, 0x1000), (0x2000, 16 * mb - 0x2000)])]
        ));
    }

    #[test]
    fn virtualized_offsets_cover_bars_rom_and_line() {
        assert!(is_virtualized(0x10) && is_virtualized(0x27));
        assert!(is_virtualized(0x30) && is_virtualized(0x3c));
        assert!(!is_virtualized(0x04) && !is_virtualized(0x3d) && !is_virtualized(0x40));
    }
}
