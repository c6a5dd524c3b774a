//! What all VFIO devices of one guest share: one IOMMU context with guest RAM mapped into it
//! once — a type1 container (the group API) or an iommufd IOAS (the device cdev API) — and
//! KVM's VFIO pseudo device, which KVM allows once per VM (a second KVM_CREATE_DEVICE of that
//! type fails with EBUSY).

use std::fs::File;
use std::os::unix::io::RawFd;
use std::sync::Arc;

use iommufd_ioctls::IommuFd;
use kvm_bindings::{kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::{DeviceFd, VmFd};
use vfio_ioctls::{VfioDeviceFd, VfioIommufd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::group::Container;
use super::VfioError;

/// KVM_DEV_VFIO_FILE / KVM_DEV_VFIO_FILE_ADD (KVM_DEV_VFIO_GROUP / _GROUP_ADD before 6.6).
const KVM_DEV_VFIO_FILE: u32 = 1;
const KVM_DEV_VFIO_FILE_ADD: u64 = 1;

enum Backend {
    /// /dev/vfio/vfio with the devices' groups, and KVM's VFIO device told about each group.
    Group(Container, DeviceFd),
    /// /dev/iommu (as vgpud opened it) with device cdevs bound to it.
    Iommufd(Arc<VfioIommufd>),
}

pub struct VfioContext {
    backend: Backend,
    ram_mapped: bool,
}

fn kvm_vfio_device(vm: &VmFd) -> Result<DeviceFd, VfioError> {
    let mut kvm_vfio = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    vm.create_device(&mut kvm_vfio)
        .map_err(VfioError::KvmDevice)
}

impl VfioContext {
    /// The group API on a container someone else opened (/dev/vfio/vfio, passed by vgpud).
    pub fn with_container(vm: &VmFd, container: File) -> Result<Self, VfioError> {
        let kvm_vfio = kvm_vfio_device(vm)?;
        let container = Container::new(container).map_err(|e| VfioError::Group("container", e))?;
        Ok(Self {
            backend: Backend::Group(container, kvm_vfio),
            ram_mapped: false,
        })
    }

    /// Attaches a device's group to the container and tells KVM about it; the descriptor
    /// the group goes by (the first one given for it).
    pub fn attach_group(&mut self, group: File) -> Result<RawFd, VfioError> {
        let Backend::Group(container, kvm_vfio) = &mut self.backend else {
            return Err(VfioError::MixedApis);
        };
        let fd = container
            .attach(group)
            .map_err(|e| VfioError::Group("group", e))?;
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_FILE,
            attr: KVM_DEV_VFIO_FILE_ADD,
            addr: &fd as *const RawFd as u64,
        };
        kvm_vfio
            .set_device_attr(&attr)
            .map_err(|e| VfioError::Group("KVM-VFIO", e.into()))?;
        Ok(fd)
    }

    /// The cdev API on an iommufd someone else opened (/dev/iommu, passed by vgpud).
    pub fn with_iommufd(vm: &VmFd, iommufd: File) -> Result<Self, VfioError> {
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio_device(vm)?));
        let iommufd = Arc::new(IommuFd::new_from_fd(iommufd));
        let vfio = VfioIommufd::new(iommufd, None, Some(handle))
            .map_err(|e| VfioError::Setup("iommufd", e))?;
        Ok(Self {
            backend: Backend::Iommufd(Arc::new(vfio)),
            ram_mapped: false,
        })
    }

    /// The iommufd a device cdev binds to; `None` for the group API.
    pub fn iommufd(&self) -> Option<Arc<VfioIommufd>> {
        match &self.backend {
            Backend::Group(..) => None,
            Backend::Iommufd(i) => Some(i.clone()),
        }
    }

    /// Maps guest RAM for the devices' DMA, once: a container has its IOMMU type only after
    /// the first group joined it.
    pub fn map_ram(&mut self, mem: &GuestMemoryMmap) -> Result<(), VfioError> {
        if self.ram_mapped {
            return Ok(());
        }
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VfioError::GuestMemory)?;
            let (iova, size) = (region.start_addr().0, region.len());
            // `host` is the start of a live mapping of `size` bytes owned by the guest memory,
            // which outlives the context (both live until the VMM exits).
            match &self.backend {
                Backend::Group(container, _) => {
                    // SAFETY: see above: the mapping outlives the DMA mapping made of it.
                    unsafe { container.map_dma(iova, size, host as u64) }
                        .map_err(|e| VfioError::Group("dma map", e))?
                }
                Backend::Iommufd(i) => {
                    // SAFETY: see above: the mapping outlives the DMA mapping made of it.
                    unsafe { i.vfio_dma_map(iova, size as usize, host) }
                        .map_err(|e| VfioError::Setup("dma map", e))?
                }
            }
        }
        self.ram_mapped = true;
        Ok(())
    }
}
