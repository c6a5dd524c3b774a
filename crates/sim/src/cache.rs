//! What the kernel may cache of the simulated tree, and the invalidation that keeps it honest.
//! A node is *static* when only a topology change (plug, unplug, driver bind or unbind) can
//! remove it or change its attributes: the kernel keeps its name and attributes, and those
//! changes invalidate every static inode it was given, page cache included. A text attribute's
//! contents are never cached (fs.rs opens it with direct I/O: sysfs says it is one page long),
//! so a count such as `available_instances` is static here: its mode and size never change,
//! only what a read returns. A static binary attribute (`config`) has its true size, and its
//! contents stay in the page cache. What a create or remove
//! changes (device directories, listings of devices, IOMMU groups) stays *volatile*: uncached,
//! asked for on every access, exactly as current as the state behind it. No listing's contents
//! are cached: one read while the state changes could enter the cache after the invalidation.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use fuser::{INodeNo, Notifier};

use super::kernel::Kernel;

/// How long the kernel keeps a static node's name and attributes. Long, because topology
/// changes invalidate them explicitly.
pub const STATIC_TTL: Duration = Duration::from_secs(3600);

/// How long after a topology change the kernel may still take in a reply built before it.
pub const RACE_WINDOW: Duration = Duration::from_millis(100);

/// Whether the node at root-relative `path` is static (see the module comment). Decided by
/// the path's shape, as `tree::resolve` lays the tree out.
pub fn is_static(k: &Kernel, path: &str) -> bool {
    let comps: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match comps.as_slice() {
        // Devices come and go under bus/mdev; IOMMU group numbers are reused by new devices.
        ["bus", "mdev", "devices", ..] | ["bus", "mdev", "drivers", _, ..] => false,
        ["kernel", "iommu_groups", ..] => false,
        ["devices", ..] => static_under_devices(k, &comps),
        _ => true,
    }
}

fn static_under_devices(k: &Kernel, comps: &[&str]) -> bool {
    // The parent whose canonical directory is a prefix of the path; containers above it only
    // change with plug and unplug.
    let Some(split) = (2..=comps.len()).rev().find(|&split| {
        k.parents
            .get(comps[split - 1])
            .is_some_and(|p| p.devpath.split('/').eq(comps[..split].iter().copied()))
    }) else {
        return true;
    };
    match &comps[split..] {
        // Lists the parent's devices.
        [] => false,
        ["mdev_supported_types", _, "devices", ..] => false,
        // A device's own subtree.
        [name, ..] => !k.devices.contains_key(*name),
    }
}

/// Requests served, by kind: lets tests see what the kernel answered from its cache.
#[derive(Debug, Default)]
pub struct Requests {
    pub lookup: AtomicU64,
    pub getattr: AtomicU64,
    pub readlink: AtomicU64,
    pub open: AtomicU64,
    pub read: AtomicU64,
    pub write: AtomicU64,
    pub readdir: AtomicU64,
}

impl Requests {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RequestCounts {
            lookup: get(&self.lookup),
            getattr: get(&self.getattr),
            readlink: get(&self.readlink),
            open: get(&self.open),
            read: get(&self.read),
            write: get(&self.write),
            readdir: get(&self.readdir),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestCounts {
    pub lookup: u64,
    pub getattr: u64,
    pub readlink: u64,
    pub open: u64,
    pub read: u64,
    pub write: u64,
    pub readdir: u64,
}

#[derive(Default)]
pub struct Cache {
    notifier: OnceLock<Notifier>,
    /// Inodes the kernel was allowed to cache something of.
    cached: Mutex<HashSet<u64>>,
    pub requests: Requests,
}

impl Cache {
    /// Set once the file system is mounted; invalidations before that have nothing to reach.
    pub fn set_notifier(&self, notifier: Notifier) {
        // Mounted once: the cell is empty.
        let _ = self.notifier.set(notifier);
    }

    fn inval(&self, ino: u64) {
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        // ENOENT: the kernel already forgot the inode, so it caches nothing of it.
        if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!("cannot invalidate the kernel's cache of inode {ino}: {e}");
            }
        }
    }

    pub fn note_cached(&self, ino: u64) {
        self.cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino);
    }

    /// After a topology change (the state is already changed): drops every cached attribute,
    /// link and page, so the next access of each static node asks again. Names stay cached;
    /// a vanished one fails at that next access, a new one was never cached as missing.
    pub fn invalidate_all(&self) {
        let inos: Vec<u64> =
            std::mem::take(&mut *self.cached.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for ino in inos {
            self.inval(ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::feed::Feed;
    use crate::profile;

    fn kernel(spec: &str) -> Kernel {
        let mut k = Kernel::new(Arc::new(Feed::default()));
        for t in profile::builtin(spec).unwrap() {
            for _ in 0..t.count {
                k.plug_template(Arc::new(t.clone())).unwrap();
            }
        }
        k
    }

    const U: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

    #[test]
    fn identity_and_type_attributes_are_static() {
        let k = kernel("nvidia-t4");
        let pf = "devices/pci0000:20/0000:20:00.0";
        for rel in [
            "vendor",
            "config",
            "resource",
            "uevent",
            "power/control",
            "mdev_supported_types",
            "mdev_supported_types/nvidia-231",
            "mdev_supported_types/nvidia-231/name",
            "mdev_supported_types/nvidia-231/description",
            "mdev_supported_types/nvidia-231/create",
            "mdev_supported_types/nvidia-231/available_instances",
        ] {
            assert!(is_static(&k, &format!("{pf}/{rel}")), "{rel}");
        }
        assert!(is_static(&k, "class/mdev_bus"));
        assert!(is_static(&k, "class/mdev_bus/0000:20:00.0"));
        assert!(is_static(&k, "devices/pci0000:20"));
    }

    #[test]
    fn what_a_create_or_remove_changes_is_volatile() {
        let mut k = kernel("nvidia-t4");
        let pf = "devices/pci0000:20/0000:20:00.0";
        k.create("0000:20:00.0", "nvidia-231", U.as_bytes())
            .unwrap();
        for path in [
            pf.to_owned(),
            format!("{pf}/mdev_supported_types/nvidia-231/devices"),
            format!("{pf}/mdev_supported_types/nvidia-231/devices/{U}"),
            format!("{pf}/{U}"),
            format!("{pf}/{U}/power/control"),
            format!("{pf}/{U}/remove"),
            format!("bus/mdev/devices/{U}"),
            "bus/mdev/devices".to_owned(),
            "bus/mdev/drivers/nvidia-vgpu-vfio".to_owned(),
            "kernel/iommu_groups".to_owned(),
            "kernel/iommu_groups/0/type".to_owned(),
        ] {
            assert!(!is_static(&k, &path), "{path}");
        }
    }

    #[test]
    fn vendor_sysfs_files_are_static() {
        let k = kernel("nvidia-l40s");
        let vf = k
            .parents
            .values()
            .find(|p| p.role == crate::kernel::Role::VendorVf)
            .unwrap()
            .devpath
            .clone();
        assert!(
            !is_static(&k, &vf),
            "the VF's own directory lists its vGPU devices"
        );
        assert!(is_static(&k, &format!("{vf}/nvidia/creatable_vgpu_types")));
        assert!(is_static(&k, &format!("{vf}/nvidia/current_vgpu_type")));
    }
}
