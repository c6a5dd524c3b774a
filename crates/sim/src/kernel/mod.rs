//! The simulated kernel: parents, capacity pools, mdevs and IOMMU groups, with the mdev core's
//! and the vendor drivers' rules (errno for every case in KERNEL-ABI.md §1, uevents in kernel
//! order). The FUSE layer renders this state as a sysfs tree; nothing here knows about FUSE.
//!
//! One `impl Kernel` per concern: topology (plugging, drivers, containers), capacity (pools and
//! what each type can still take), mdev (create and remove), vendor (NVIDIA's sysfs, mdev
//! attributes) and faults (holds, injections, synthetic events).

mod capacity;
mod faults;
mod mdev;
mod topology;
mod vendor;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::feed::Feed;
use super::profile::{DeviceTemplate, TypeSpec};
use vgpud_model::uevent::UEvent;

pub use self::faults::{wildcard, Injection};
pub use self::mdev::{parse_kernel_ulong, parse_kernel_uuid};

pub type Errno = i32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Registered with the mdev core while its driver is bound.
    MdevParent,
    /// NVIDIA vendor-sysfs VF (nvidia/current_vgpu_type).
    VendorVf,
    /// A PF whose VFs do the work.
    Plain,
}

#[derive(Debug, Clone)]
pub struct PciInfo {
    pub vendor: u16,
    pub device: u16,
    pub class: u32,
    pub subsystem_vendor: u16,
    pub subsystem_device: u16,
    pub physfn: Option<String>,
    pub virtfns: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Parent {
    pub name: String,
    /// Root-relative canonical directory, e.g. `devices/pci0000:3b/0000:3b:00.0`.
    pub devpath: String,
    pub subsystem: String,
    pub pci: Option<PciInfo>,
    pub numa_node: i32,
    pub iommu_group: Option<u32>,
    pub driver: Option<String>,
    pub default_driver: Option<String>,
    pub role: Role,
    pub unregistering: bool,
    pub template: Arc<DeviceTemplate>,
    pub pool: usize,
    /// mdevs on this parent (the core's per-parent counter), or 1 for a VF holding a vGPU.
    pub instances: u32,
    /// Vendor model: the type id the VF holds, 0 for none.
    pub current_vgpu: u32,
    /// The PF that was plugged with this function (itself for a PF).
    pub unit: String,
}

impl Parent {
    pub fn registered(&self) -> bool {
        self.role == Role::MdevParent && self.driver.is_some() && !self.unregistering
    }

    pub fn types(&self) -> &[TypeSpec] {
        &self.template.types
    }

    pub fn mdev_driver(&self) -> &str {
        self.template.mdev_driver.as_deref().unwrap_or("vfio_mdev")
    }
}

#[derive(Debug, Clone)]
pub struct Device {
    pub uuid: String,
    pub parent: String,
    pub type_id: String,
    pub iommu_group: u32,
    /// N of its `vfio-dev/vfioN` (the VFIO core's device index, smallest free).
    pub vfio_index: u32,
    /// The mdev_type link exists (the kernel adds it after the driver binds).
    pub linked: bool,
    /// `remove` was written; the device is waiting for its holder to let go.
    pub removing: bool,
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Pool {
    pub capacity: u64,
    pub used: u64,
    pub exhausted_errno: Errno,
    pub one_type: bool,
    pub per_parent_limit: Option<u32>,
    pub types_in_use: BTreeMap<String, u32>,
}

pub struct Kernel {
    pub parents: BTreeMap<String, Parent>,
    pub devices: BTreeMap<String, Device>,
    pub pools: Vec<Pool>,
    /// Unplugged units (PF name -> its functions), for re-plugging by name.
    unplugged: BTreeMap<String, Vec<Parent>>,
    groups: BTreeSet<u32>,
    next_slot: u32,
    seqnum: u64,
    feed: Arc<Feed>,
    pub injections: Vec<Injection>,
    /// Devices (mdev UUIDs or vendor VF names) held open by a simulated VM.
    pub held: BTreeSet<String>,
    pub shutting_down: bool,
    /// Directory containers under devices/ (path -> child names), derived from parents.
    pub containers: BTreeMap<String, BTreeSet<String>>,
    /// Every event sent, so unit tests read the kernel's order without a feed socket.
    #[cfg(test)]
    sent: Vec<UEvent>,
}

/// What a write asks the caller to do next.
pub enum WriteOutcome {
    Done(Result<(), Errno>),
    /// `remove` of a held device: wait until it is released, then call `finish_remove`.
    WaitRelease(String),
}

impl Kernel {
    pub fn new(feed: Arc<Feed>) -> Self {
        Self {
            parents: BTreeMap::new(),
            devices: BTreeMap::new(),
            pools: Vec::new(),
            unplugged: BTreeMap::new(),
            groups: BTreeSet::new(),
            next_slot: 0,
            seqnum: 0,
            feed,
            injections: Vec::new(),
            held: BTreeSet::new(),
            shutting_down: false,
            containers: BTreeMap::new(),
            #[cfg(test)]
            sent: Vec::new(),
        }
    }

    fn emit(&mut self, event: UEvent) {
        self.seqnum += 1;
        let mut event = event;
        event.seqnum = self.seqnum;
        self.feed.publish(&event);
        #[cfg(test)]
        self.sent.push(event);
    }

    fn alloc_group(&mut self) -> u32 {
        let mut n = 0;
        while self.groups.contains(&n) {
            n += 1;
        }
        self.groups.insert(n);
        n
    }

    pub fn seqnum(&self) -> u64 {
        self.seqnum
    }
}
