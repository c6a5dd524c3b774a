//! What all VFIO devices of one guest share: one IOMMU context with guest RAM mapped into it
//! once — a type1 container (the group API) or an iommufd IOAS (the device cdev API) — and
//! KVM's VFIO pseudo device, which KVM allows once per VM (a second KVM_CREATE_DEVICE of that
//! type fails with EBUSY).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use iommufd_ioctls::IommuFd;
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDeviceFd, VfioIommufd, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::VfioError;

enum Backend {
    /// /dev/vfio/vfio with the devices' groups.
    Group(Arc<VfioContainer>),
    /// /dev/iommu (as vgpud opened it) with device cdevs bound to it.
    Iommufd(Arc<VfioIommufd>),
}

pub struct VfioContext {
    backend: Backend,
    ram_mapped: bool,
}

fn kvm_vfio_device(vm: &VmFd) -> Result<Arc<VfioDeviceFd>, VfioError> {
    let mut kvm_vfio = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
        fd: 0,
        flags: 0,
    };
    let fd = vm
        .create_device(&mut kvm_vfio)
        .map_err(VfioError::KvmDevice)?;
    Ok(Arc::new(VfioDeviceFd::new_from_kvm(fd)))
}

impl VfioContext {
    /// The group API: opens the container /dev/vfio/vfio.
    pub fn new(vm: &VmFd) -> Result<Self, VfioError> {
        if !Path::new("/dev/vfio/vfio").exists() {
            return Err(VfioError::NoVfio);
        }
        let handle = kvm_vfio_device(vm)?;
        let container = Arc::new(
            VfioContainer::new(Some(handle)).map_err(|e| VfioError::Setup("container", e))?,
        );
        Ok(Self {
            backend: Backend::Group(container),
            ram_mapped: false,
        })
    }

    /// The cdev API on an iommufd someone else opened (/dev/iommu, passed by vgpud).
    pub fn with_iommufd(vm: &VmFd, iommufd: File) -> Result<Self, VfioError> {
        let handle = kvm_vfio_device(vm)?;
        let iommufd = Arc::new(IommuFd::new_from_fd(iommufd));
        let vfio = VfioIommufd::new(iommufd, None, Some(handle))
            .map_err(|e| VfioError::Setup("iommufd", e))?;
        Ok(Self {
            backend: Backend::Iommufd(Arc::new(vfio)),
            ram_mapped: false,
        })
    }

    pub fn ops(&self) -> Arc<dyn VfioOps> {
        match &self.backend {
            Backend::Group(c) => c.clone(),
            Backend::Iommufd(i) => i.clone(),
        }
    }

    /// The iommufd a device cdev binds to; `None` for the group API.
    pub fn iommufd(&self) -> Option<Arc<VfioIommufd>> {
        match &self.backend {
            Backend::Group(_) => None,
            Backend::Iommufd(i) => Some(i.clone()),
        }
    }

    /// Maps guest RAM for the devices' DMA, once: a container has its IOMMU type only after
    /// the first group joined it.
    pub fn map_ram(&mut self, mem: &GuestMemoryMmap) -> Result<(), VfioError> {
        if self.ram_mapped {
            return Ok(());
        }
        let ops = self.ops();
        for region in mem.iter() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VfioError::GuestMemory)?;
            // SAFETY: `host` is the start of a live mapping of `region.len()` bytes owned by
            // the guest memory, which outlives the context (both live until the VMM exits).
            unsafe { ops.vfio_dma_map(region.start_addr().0, region.len() as usize, host) }
                .map_err(|e| VfioError::Setup("dma map", e))?;
        }
        self.ram_mapped = true;
        Ok(())
    }
}
