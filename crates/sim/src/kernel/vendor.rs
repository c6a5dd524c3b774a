//! Vendor driver sysfs: NVIDIA's `nvidia/current_vgpu_type` on a VF (vGPU 17+), writable mdev
//! attributes such as `nvidia/vgpu_params`, and the PCI function a guest sees.

use super::{parse_kernel_ulong, Errno, Kernel, Role};
use crate::profile::GuestPci;

impl Kernel {
    /// `echo ID > nvidia/current_vgpu_type` (0 deletes the vGPU).
    pub fn set_current_vgpu(&mut self, vf: &str, buf: &[u8]) -> Result<(), Errno> {
        let value = parse_kernel_ulong(buf).ok_or(libc::EINVAL)?;
        let p = self.parents.get(vf).ok_or(libc::ENODEV)?;
        if p.role != Role::VendorVf || p.driver.is_none() {
            return Err(libc::ENODEV);
        }
        let current = p.current_vgpu;
        if value == 0 {
            if current == 0 {
                return Ok(());
            }
            if self.held.contains(vf) {
                return Err(libc::EBUSY);
            }
            self.release_capacity(vf, &current.to_string());
            if let Some(p) = self.parents.get_mut(vf) {
                p.current_vgpu = 0;
            }
            return Ok(());
        }
        if current != 0 {
            return Err(libc::EBUSY);
        }
        let id = u32::try_from(value).map_err(|_| libc::EINVAL)?.to_string();
        let ty = p.types().iter().find(|t| t.id == id).ok_or(libc::EINVAL)?;
        if self.available(p, ty) == 0 {
            return Err(libc::EINVAL);
        }
        self.take_capacity(vf, &id);
        if let Some(p) = self.parents.get_mut(vf) {
            p.current_vgpu = value as u32;
        }
        Ok(())
    }

    /// A write to a vendor attribute of an mdev (e.g. nvidia/vgpu_params).
    pub fn write_attribute(&mut self, uuid: &str, attr: &str, buf: &[u8]) -> Result<(), Errno> {
        let d = self.devices.get_mut(uuid).ok_or(libc::ENODEV)?;
        let value = std::str::from_utf8(buf).map_err(|_| libc::EINVAL)?;
        let slot = d.attributes.get_mut(attr).ok_or(libc::ENOENT)?;
        *slot = value.trim_end_matches('\n').to_owned();
        Ok(())
    }

    pub fn guest_pci(&self, uuid: &str) -> Option<&GuestPci> {
        let parent = match self.devices.get(uuid) {
            Some(d) => &d.parent,
            None => uuid,
        };
        self.parents.get(parent).map(|p| &p.template.guest)
    }
}
