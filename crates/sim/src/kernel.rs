//! The simulated kernel: parents, capacity pools, mdevs and IOMMU groups, with the mdev core's
//! and the vendor drivers' rules (errno for every case in KERNEL-ABI.md §1, uevents in kernel
//! order). The FUSE layer renders this state as a sysfs tree; nothing here knows about FUSE.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::errno;
use super::feed::Feed;
use super::profile::{DeviceKind, DeviceTemplate, GuestPci, ParentModel, TypeSpec};
use vgpud_model::uevent::UEvent;

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

#[derive(Debug, Clone)]
pub struct Injection {
    pub path: String,
    pub errno: Option<Errno>,
    pub delay: Option<std::time::Duration>,
    pub remaining: u32,
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
        }
    }

    fn emit(&mut self, event: UEvent) {
        self.seqnum += 1;
        let mut event = event;
        event.seqnum = self.seqnum;
        self.feed.publish(&event);
    }

    fn alloc_group(&mut self) -> u32 {
        let mut n = 0;
        while self.groups.contains(&n) {
            n += 1;
        }
        self.groups.insert(n);
        n
    }

    // ---- plugging ------------------------------------------------------------------------

    /// Instantiates a template once (a PF and its VFs, or a virtual device); returns the names.
    pub fn plug_template(&mut self, template: Arc<DeviceTemplate>) -> Result<Vec<String>, String> {
        let functions = self.build_unit(template)?;
        let names = functions.iter().map(|p| p.name.clone()).collect();
        self.attach_unit(functions);
        Ok(names)
    }

    /// Re-plugs a unit that was unplugged, at the same addresses.
    pub fn replug(&mut self, name: &str) -> Result<Vec<String>, String> {
        let functions = self
            .unplugged
            .remove(name)
            .ok_or_else(|| format!("{name} was not unplugged (or is not a physical function)"))?;
        let names = functions.iter().map(|p| p.name.clone()).collect();
        self.attach_unit(functions);
        Ok(names)
    }

    fn build_unit(&mut self, t: Arc<DeviceTemplate>) -> Result<Vec<Parent>, String> {
        let pool = self.pools.len();
        let exhausted = errno::from_name(&t.pool.exhausted_errno)
            .ok_or_else(|| format!("unknown errno {}", t.pool.exhausted_errno))?;
        let mut out = Vec::new();
        let base = Parent {
            name: String::new(),
            devpath: String::new(),
            subsystem: "pci".into(),
            pci: None,
            numa_node: -1,
            iommu_group: None,
            driver: t.driver.clone(),
            default_driver: t.driver.clone(),
            role: Role::MdevParent,
            unregistering: false,
            template: t.clone(),
            pool,
            instances: 0,
            current_vgpu: 0,
            unit: String::new(),
        };
        match t.kind {
            DeviceKind::Virtual => {
                let class = t.class.clone().unwrap_or_default();
                if self.parents.contains_key(&class) {
                    return Err(format!("{class} is already plugged"));
                }
                out.push(Parent {
                    name: class.clone(),
                    devpath: format!("devices/virtual/{class}/{class}"),
                    subsystem: class.clone(),
                    unit: class,
                    ..base
                });
            }
            DeviceKind::Pci => {
                let (domain, bus, dev, func) = match &t.address {
                    Some(a) => super::profile::parse_pci_address(a)
                        .ok_or_else(|| format!("bad address {a}"))?,
                    None => {
                        let slot = self.next_slot;
                        self.next_slot += 1;
                        ((slot / 200) as u16, (0x20 + slot % 200) as u8, 0, 0)
                    }
                };
                let addr = |d: u8, f: u8| format!("{domain:04x}:{bus:02x}:{d:02x}.{f:x}");
                let pf_name = addr(dev, func);
                if self.parents.contains_key(&pf_name) || self.unplugged.contains_key(&pf_name) {
                    return Err(format!("{pf_name} is already in use"));
                }
                let container = format!("devices/pci{domain:04x}:{bus:02x}");
                let numa = t.numa_node.unwrap_or((self.next_slot % 2) as i32);
                let vf_names: Vec<String> = (0..t.vfs)
                    .map(|i| {
                        let devfn = u32::from(dev) * 8 + u32::from(func) + 4 + i;
                        addr((devfn / 8) as u8, (devfn % 8) as u8)
                    })
                    .collect();
                let pci = PciInfo {
                    vendor: t.vendor,
                    device: t.device,
                    class: t.class_code,
                    subsystem_vendor: t.subsystem_vendor,
                    subsystem_device: t.subsystem_device,
                    physfn: None,
                    virtfns: vf_names.clone(),
                };
                out.push(Parent {
                    name: pf_name.clone(),
                    devpath: format!("{container}/{pf_name}"),
                    pci: Some(pci.clone()),
                    numa_node: numa,
                    role: if t.model == ParentModel::Mdev {
                        Role::MdevParent
                    } else {
                        Role::Plain
                    },
                    unit: pf_name.clone(),
                    ..base.clone()
                });
                for vf in vf_names {
                    out.push(Parent {
                        name: vf.clone(),
                        devpath: format!("{container}/{vf}"),
                        pci: Some(PciInfo {
                            device: t.vf_device.unwrap_or(t.device),
                            physfn: Some(pf_name.clone()),
                            virtfns: Vec::new(),
                            ..pci.clone()
                        }),
                        numa_node: numa,
                        role: if t.model == ParentModel::NvidiaVendor {
                            Role::VendorVf
                        } else {
                            Role::MdevParent
                        },
                        unit: pf_name.clone(),
                        ..base.clone()
                    });
                }
            }
        }
        self.pools.push(Pool {
            capacity: t.pool.capacity,
            used: 0,
            exhausted_errno: exhausted,
            one_type: t.pool.one_type,
            per_parent_limit: t.pool.per_parent_limit,
            types_in_use: BTreeMap::new(),
        });
        Ok(out)
    }

    fn attach_unit(&mut self, functions: Vec<Parent>) {
        for mut p in functions {
            if p.pci.is_some() {
                p.iommu_group = Some(self.alloc_group());
            }
            let driver = p.default_driver.clone();
            p.driver = None;
            p.unregistering = false;
            p.instances = 0;
            p.current_vgpu = 0;
            let name = p.name.clone();
            self.add_container_path(&p.devpath);
            let add = self.parent_event("add", &p);
            self.parents.insert(name.clone(), p);
            self.emit(add);
            if driver.is_some() || self.parents[&name].pci.is_none() {
                if let Err(e) = self.bind_driver(&name) {
                    tracing::warn!("{name}: {e}");
                }
            }
            // A sample driver's device comes and goes with its module, which the kernel
            // announces after the module's init (and after its exit) returned.
            if let Some(module) = self.module_of(&name) {
                self.emit(UEvent::new("add", &format!("/module/{module}"), "module"));
            }
        }
    }

    /// The module behind a virtual (sample driver) parent; PCI parents have none of their own.
    pub fn module_of(&self, name: &str) -> Option<String> {
        let p = self.parents.get(name)?;
        p.pci
            .as_ref()
            .map_or(p.template.mdev_driver.clone(), |_| None)
    }

    fn add_container_path(&mut self, devpath: &str) {
        let parts: Vec<&str> = devpath.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            self.containers
                .entry(dir)
                .or_default()
                .insert(parts[i].to_owned());
        }
    }

    fn remove_container_path(&mut self, devpath: &str) {
        let parts: Vec<&str> = devpath.split('/').collect();
        for i in (1..parts.len()).rev() {
            let dir = parts[..i].join("/");
            let child = parts[i];
            let child_is_container = self.containers.contains_key(&format!("{dir}/{child}"));
            let Some(children) = self.containers.get_mut(&dir) else {
                continue;
            };
            if !child_is_container {
                children.remove(child);
            }
            if children.is_empty() && i > 1 {
                self.containers.remove(&dir);
            }
        }
    }

    fn parent_event(&self, action: &str, p: &Parent) -> UEvent {
        let mut e = UEvent::new(action, &format!("/{}", p.devpath), &p.subsystem);
        if let Some(pci) = &p.pci {
            e = e
                .with("PCI_CLASS", &format!("{:X}", pci.class))
                .with("PCI_ID", &format!("{:04X}:{:04X}", pci.vendor, pci.device))
                .with(
                    "PCI_SUBSYS_ID",
                    &format!("{:04X}:{:04X}", pci.subsystem_vendor, pci.subsystem_device),
                )
                .with("PCI_SLOT_NAME", &p.name);
        }
        if let Some(d) = &p.driver {
            e = e.with("DRIVER", d);
        }
        e
    }

    /// Binds the parent's driver: mdev parents register (`change MDEV_STATE=registered`) in the
    /// driver's probe, before the `bind` event.
    pub fn bind_driver(&mut self, name: &str) -> Result<(), String> {
        let p = self
            .parents
            .get_mut(name)
            .ok_or_else(|| format!("no device {name}"))?;
        if p.driver.is_some() {
            return Err(format!("{name} already has a driver"));
        }
        let virtual_dev = p.pci.is_none();
        if !virtual_dev {
            p.driver = Some(
                p.default_driver
                    .clone()
                    .ok_or_else(|| format!("{name} has no driver to bind"))?,
            );
        } else {
            // A sample driver's device is "bound" while the module is loaded.
            p.driver = Some(p.template.mdev_driver.clone().unwrap_or_default());
        }
        let p = &self.parents[name];
        if p.role == Role::MdevParent {
            let e = UEvent::new("change", &format!("/{}", p.devpath), &p.subsystem)
                .with("MDEV_STATE", "registered");
            self.emit(e);
        }
        let p = &self.parents[name];
        if !virtual_dev {
            let e = self.parent_event("bind", p);
            self.emit(e);
        }
        Ok(())
    }

    /// Which held devices stand in the way of unbinding `name` (the caller waits for them).
    pub fn begin_unbind(&mut self, name: &str) -> Result<Vec<String>, String> {
        let p = self
            .parents
            .get_mut(name)
            .ok_or_else(|| format!("no device {name}"))?;
        if p.driver.is_none() {
            return Err(format!("{name} has no driver bound"));
        }
        let mut waiting = Vec::new();
        match p.role {
            Role::MdevParent => {
                p.unregistering = true;
                let uuids: Vec<String> = self
                    .devices
                    .values()
                    .filter(|d| d.parent == name)
                    .map(|d| d.uuid.clone())
                    .collect();
                for u in uuids {
                    if let Some(d) = self.devices.get_mut(&u) {
                        d.removing = true;
                        d.linked = false;
                    }
                    if self.held.contains(&u) {
                        waiting.push(u);
                    }
                }
            }
            Role::VendorVf => {
                if p.current_vgpu != 0 && self.held.contains(name) {
                    waiting.push(name.to_owned());
                }
            }
            Role::Plain => {}
        }
        Ok(waiting)
    }

    /// Completes an unbind once nothing is held: mdevs go (unbind, remove), the parent
    /// unregisters (`change MDEV_STATE=unregistered`), then the driver lets go (`unbind`).
    pub fn finish_unbind(&mut self, name: &str) {
        let uuids: Vec<String> = self
            .devices
            .values()
            .filter(|d| d.parent == name)
            .map(|d| d.uuid.clone())
            .collect();
        for u in uuids {
            self.finish_remove(&u);
        }
        let Some(p) = self.parents.get(name) else {
            return;
        };
        if p.role == Role::MdevParent {
            let e = UEvent::new("change", &format!("/{}", p.devpath), &p.subsystem)
                .with("MDEV_STATE", "unregistered");
            self.emit(e);
        }
        let Some(p) = self.parents.get(name) else {
            return;
        };
        if p.role == Role::VendorVf && p.current_vgpu != 0 {
            let t = p.current_vgpu.to_string();
            self.release_capacity(name, &t);
        }
        let Some(p) = self.parents.get_mut(name) else {
            return;
        };
        p.unregistering = false;
        p.driver = None;
        p.current_vgpu = 0;
        let virtual_dev = p.pci.is_none();
        let p = &self.parents[name];
        if !virtual_dev {
            let e = UEvent::new("unbind", &format!("/{}", p.devpath), &p.subsystem)
                .with("PCI_SLOT_NAME", &p.name);
            self.emit(e);
        }
    }

    /// The functions an unplug of `name` takes away, VFs first.
    pub fn unit_functions(&self, name: &str) -> Result<Vec<String>, String> {
        let p = self
            .parents
            .get(name)
            .ok_or_else(|| format!("no device {name}"))?;
        let mut names: Vec<String> = p
            .pci
            .as_ref()
            .map(|pci| pci.virtfns.clone())
            .unwrap_or_default();
        names.retain(|n| self.parents.contains_key(n));
        names.push(name.to_owned());
        Ok(names)
    }

    /// Removes one function whose driver is already unbound (`remove` uevent).
    pub fn finish_unplug(&mut self, name: &str) {
        let Some(mut p) = self.parents.remove(name) else {
            return;
        };
        let e = self.parent_event("remove", &p);
        self.emit(e);
        if p.pci.is_none() {
            if let Some(module) = &p.template.mdev_driver {
                self.emit(UEvent::new(
                    "remove",
                    &format!("/module/{module}"),
                    "module",
                ));
            }
        }
        if let Some(g) = p.iommu_group.take() {
            self.groups.remove(&g);
        }
        self.remove_container_path(&p.devpath);
        p.driver = p.default_driver.clone();
        let unit = p.unit.clone();
        self.unplugged.entry(unit).or_default().insert(0, p);
    }

    // ---- capacity --------------------------------------------------------------------------

    pub fn available(&self, p: &Parent, ty: &TypeSpec) -> u64 {
        if p.role == Role::MdevParent && !p.registered() {
            return 0;
        }
        let pool = &self.pools[p.pool];
        if pool.one_type && !pool.types_in_use.is_empty() && !pool.types_in_use.contains_key(&ty.id)
        {
            return 0;
        }
        let mut n = (pool.capacity - pool.used) / ty.cost;
        if let Some(limit) = pool.per_parent_limit {
            n = n.min(u64::from(limit.saturating_sub(p.instances)));
        }
        if p.role == Role::VendorVf {
            n = if p.current_vgpu == 0 && p.driver.is_some() {
                n.min(1)
            } else {
                0
            };
        }
        n
    }

    fn take_capacity(&mut self, parent: &str, type_id: &str) {
        let Some(p) = self.parents.get_mut(parent) else {
            return;
        };
        p.instances += 1;
        let cost = p
            .types()
            .iter()
            .find(|t| t.id == type_id)
            .map_or(0, |t| t.cost);
        let pool = &mut self.pools[p.pool];
        pool.used += cost;
        *pool.types_in_use.entry(type_id.to_owned()).or_default() += 1;
    }

    fn release_capacity(&mut self, parent: &str, type_id: &str) {
        let Some(p) = self.parents.get_mut(parent) else {
            return;
        };
        p.instances = p.instances.saturating_sub(1);
        let cost = p
            .types()
            .iter()
            .find(|t| t.id == type_id)
            .map_or(0, |t| t.cost);
        let pool = &mut self.pools[p.pool];
        pool.used = pool.used.saturating_sub(cost);
        if let Some(n) = pool.types_in_use.get_mut(type_id) {
            *n -= 1;
            if *n == 0 {
                pool.types_in_use.remove(type_id);
            }
        }
    }

    // ---- mdev create / remove ------------------------------------------------------------

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

    /// A write to a vendor attribute of an mdev (e.g. nvidia/vgpu_params).
    pub fn write_attribute(&mut self, uuid: &str, attr: &str, buf: &[u8]) -> Result<(), Errno> {
        let d = self.devices.get_mut(uuid).ok_or(libc::ENODEV)?;
        let value = std::str::from_utf8(buf).map_err(|_| libc::EINVAL)?;
        let slot = d.attributes.get_mut(attr).ok_or(libc::ENOENT)?;
        *slot = value.trim_end_matches('\n').to_owned();
        Ok(())
    }

    // ---- NVIDIA vendor sysfs -------------------------------------------------------------

    /// Type ids the VF can take now (nvidia/creatable_vgpu_types).
    pub fn creatable<'a>(&self, p: &'a Parent) -> Vec<&'a TypeSpec> {
        p.types()
            .iter()
            .filter(|t| self.available(p, t) > 0)
            .collect()
    }

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

    /// A `uevent` file write: the kernel sends a synthetic event with that action.
    pub fn synthetic_event(
        &mut self,
        devpath: &str,
        subsystem: &str,
        buf: &[u8],
    ) -> Result<(), Errno> {
        let text = std::str::from_utf8(buf).map_err(|_| libc::EINVAL)?;
        let action = text.split_whitespace().next().ok_or(libc::EINVAL)?;
        if ![
            "add", "remove", "change", "bind", "unbind", "online", "offline", "move",
        ]
        .contains(&action)
        {
            return Err(libc::EINVAL);
        }
        self.emit(UEvent::new(action, &format!("/{devpath}"), subsystem).with("SYNTH_UUID", "0"));
        Ok(())
    }

    // ---- holds and injections --------------------------------------------------------------

    pub fn hold(&mut self, id: &str) -> Result<(), String> {
        let exists = self.devices.get(id).is_some_and(|d| !d.removing)
            || self.parents.get(id).is_some_and(|p| p.current_vgpu != 0);
        if !exists {
            return Err(format!("no device {id} to hold"));
        }
        self.held.insert(id.to_owned());
        Ok(())
    }

    pub fn release(&mut self, id: &str) -> Result<(), String> {
        if self.held.remove(id) {
            Ok(())
        } else {
            Err(format!("{id} is not held"))
        }
    }

    /// Takes the first injection for `path`, if any.
    pub fn take_injection(&mut self, path: &str) -> Option<Injection> {
        let i = self
            .injections
            .iter()
            .position(|j| j.path == path || (j.path.contains('*') && wildcard(&j.path, path)))?;
        let inj = self.injections[i].clone();
        if self.injections[i].remaining <= 1 {
            self.injections.remove(i);
        } else {
            self.injections[i].remaining -= 1;
        }
        Some(inj)
    }

    pub fn guest_pci(&self, uuid: &str) -> Option<&GuestPci> {
        let parent = match self.devices.get(uuid) {
            Some(d) => &d.parent,
            None => uuid,
        };
        self.parents.get(parent).map(|p| &p.template.guest)
    }

    pub fn seqnum(&self) -> u64 {
        self.seqnum
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
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
    fn wildcard_matches_runs_including_slashes() {
        assert!(wildcard(
            "*/nvidia/vgpu_params",
            "devices/pci0000:00/0000:20:00.0/u/nvidia/vgpu_params"
        ));
        assert!(wildcard("devices/*/remove", "devices/a/b/remove"));
        assert!(wildcard("a*b*c", "abc"));
        assert!(wildcard("exact", "exact"));
        assert!(!wildcard(
            "*/nvidia/vgpu_params",
            "devices/u/nvidia/vgpu_params2"
        ));
        assert!(!wildcard("devices/*/remove", "class/x/remove"));
        assert!(!wildcard("a*b*c", "acb"));
        assert!(!wildcard("exact", "exactly"));
    }

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
