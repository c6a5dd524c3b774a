//! The mdev core's `create` and `remove` files, in the order and with the errno the kernel
//! checks them, and the two parsers (uuid_is_valid, kstrtoul) those writes go through.

use super::{Device, Errno, Kernel, WriteOutcome};
use vgpud_model::uevent::UEvent;

impl Kernel {
    /// `echo UUID > .../mdev_supported_types/TYPE/create`, as mdev core's create_store and
    /// mdev_device_create check it, in the same order.
    pub fn create(&mut self, parent: &str, type_id: &str, buf: &[u8]) -> Result<(), Errno> {
        if buf.len() < 36 || buf.len() > 37 {
            return Err(libc::EINVAL);
        }
        let uuid = parse_kernel_uuid(&buf[..36]).ok_or(libc::EINVAL)?;
        if self.devices.contains_key(&uuid) {
            return Err(libc::EEXIST);
        }
        let p = self.parents.get(parent).ok_or(libc::ENODEV)?;
        if p.unregistering || !p.registered() {
            return Err(libc::ENODEV);
        }
        let ty = p
            .types()
            .iter()
            .find(|t| t.id == type_id)
            .ok_or(libc::ENOENT)?
            .clone();
        let pool = &self.pools[p.pool];
        if let Some(limit) = pool.per_parent_limit {
            if p.instances >= limit {
                return Err(libc::EUSERS);
            }
        }
        let fits = self.available(p, &ty) > 0;
        let exhausted = pool.exhausted_errno;
        let devpath = format!("/{}/{uuid}", p.devpath);
        let driver = p.mdev_driver().to_owned();
        // device_add() has announced the device before the vendor driver's probe can refuse.
        self.emit(UEvent::new("add", &devpath, "mdev"));
        if !fits {
            self.emit(UEvent::new("remove", &devpath, "mdev"));
            return Err(exhausted);
        }
        let group = self.alloc_group();
        let vfio_index = (0..)
            .find(|n| !self.devices.values().any(|d| d.vfio_index == *n))
            .unwrap_or(0);
        self.take_capacity(parent, type_id);
        let attributes = self.parents[parent]
            .template
            .device_attributes
            .iter()
            .map(|a| (a.clone(), String::new()))
            .collect();
        self.devices.insert(
            uuid.clone(),
            Device {
                uuid: uuid.clone(),
                parent: parent.to_owned(),
                type_id: type_id.to_owned(),
                iommu_group: group,
                vfio_index,
                linked: false,
                removing: false,
                attributes,
            },
        );
        // The vendor driver's probe registers the VFIO device before the driver core's `bind`.
        self.emit(UEvent::new(
            "add",
            &format!("{devpath}/vfio-dev/vfio{vfio_index}"),
            "vfio-dev",
        ));
        self.emit(UEvent::new("bind", &devpath, "mdev").with("DRIVER", &driver));
        if let Some(d) = self.devices.get_mut(&uuid) {
            d.linked = true;
        }
        Ok(())
    }

    /// `echo 1 > /sys/bus/mdev/devices/UUID/remove`.
    pub fn remove(&mut self, uuid: &str, buf: &[u8]) -> WriteOutcome {
        let Some(value) = parse_kernel_ulong(buf) else {
            return WriteOutcome::Done(Err(libc::EINVAL));
        };
        if value == 0 {
            return WriteOutcome::Done(Ok(()));
        }
        let Some(d) = self.devices.get(uuid) else {
            return WriteOutcome::Done(Err(libc::ENODEV));
        };
        if d.removing {
            // device_remove_file_self() lost the race: the other writer removes it.
            return WriteOutcome::Done(Ok(()));
        }
        if self.parents.get(&d.parent).is_some_and(|p| p.unregistering) {
            return WriteOutcome::Done(Err(libc::ENODEV));
        }
        if let Some(d) = self.devices.get_mut(uuid) {
            d.removing = true;
            d.linked = false;
        }
        if self.held.contains(uuid) {
            return WriteOutcome::WaitRelease(uuid.to_owned());
        }
        self.finish_remove(uuid);
        WriteOutcome::Done(Ok(()))
    }

    pub fn finish_remove(&mut self, uuid: &str) {
        let Some(d) = self.devices.remove(uuid) else {
            return;
        };
        let devpath = self
            .parents
            .get(&d.parent)
            .map(|p| format!("/{}/{uuid}", p.devpath))
            .unwrap_or_default();
        self.emit(UEvent::new(
            "remove",
            &format!("{devpath}/vfio-dev/vfio{}", d.vfio_index),
            "vfio-dev",
        ));
        self.emit(UEvent::new("unbind", &devpath, "mdev"));
        self.emit(UEvent::new("remove", &devpath, "mdev"));
        self.groups.remove(&d.iommu_group);
        self.held.remove(uuid);
        self.release_capacity(&d.parent, &d.type_id);
    }
}

/// The kernel's uuid_is_valid(): 8-4-4-4-12 hex digits, either case; returns lowercase.
pub fn parse_kernel_uuid(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 36 {
        return None;
    }
    for (i, b) in bytes.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        };
        if !ok {
            return None;
        }
    }
    Some(String::from_utf8_lossy(bytes).to_ascii_lowercase())
}

/// kstrtoul(buf, 0): optional trailing newline, decimal, 0x-hex or 0-octal.
pub fn parse_kernel_ulong(buf: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(buf).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_uuid_rules() {
        assert_eq!(
            parse_kernel_uuid(b"83B8F4F2-509F-382F-3C1E-E6BFE0FA1001").as_deref(),
            Some("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001")
        );
        assert!(parse_kernel_uuid(b"83b8f4f2x509f-382f-3c1e-e6bfe0fa1001").is_none());
        assert!(parse_kernel_uuid(b"83b8f4f2-509f-382f-3c1e-e6bfe0fa100g").is_none());
        assert!(parse_kernel_uuid(b"83b8f4f2-509f-382f-3c1e-e6bfe0fa100").is_none());
    }

    #[test]
    fn kstrtoul_rules() {
        assert_eq!(parse_kernel_ulong(b"1\n"), Some(1));
        assert_eq!(parse_kernel_ulong(b"0"), Some(0));
        assert_eq!(parse_kernel_ulong(b"0x10"), Some(16));
        assert_eq!(parse_kernel_ulong(b"010"), Some(8));
        assert_eq!(parse_kernel_ulong(b"yes"), None);
        assert_eq!(parse_kernel_ulong(b""), None);
        assert_eq!(parse_kernel_ulong(b"1 "), None);
    }
}
