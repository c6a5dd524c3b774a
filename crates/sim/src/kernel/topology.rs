//! Plugging and unplugging units (a PF with its VFs, or a sample driver's virtual device),
//! binding and unbinding their drivers, and the IOMMU groups and `devices/` directories that
//! come and go with them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Kernel, Parent, PciInfo, Pool, Role};
use crate::errno;
use crate::profile::{DeviceKind, DeviceTemplate, ParentModel};
use vgpud_model::uevent::UEvent;

impl Kernel {
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
                    Some(a) => crate::profile::parse_pci_address(a)
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
                // The PF and its VFs: one unit, on one NUMA node.
                let function = |name: &String, pci: PciInfo, role: Role| Parent {
                    name: name.clone(),
                    devpath: format!("{container}/{name}"),
                    pci: Some(pci),
                    numa_node: numa,
                    role,
                    unit: pf_name.clone(),
                    ..base.clone()
                };
                let pf_role = if t.model == ParentModel::Mdev {
                    Role::MdevParent
                } else {
                    Role::Plain
                };
                out.push(function(&pf_name, pci.clone(), pf_role));
                let vf_role = if t.model == ParentModel::NvidiaVendor {
                    Role::VendorVf
                } else {
                    Role::MdevParent
                };
                for vf in &vf_names {
                    let vf_pci = PciInfo {
                        device: t.vf_device.unwrap_or(t.device),
                        physfn: Some(pf_name.clone()),
                        virtfns: Vec::new(),
                        ..pci.clone()
                    };
                    out.push(function(vf, vf_pci, vf_role));
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
                for u in self.devices_on(name) {
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

    /// The UUIDs of the mdevs on parent `name`.
    fn devices_on(&self, name: &str) -> Vec<String> {
        self.devices
            .values()
            .filter(|d| d.parent == name)
            .map(|d| d.uuid.clone())
            .collect()
    }

    /// Completes an unbind once nothing is held: mdevs go (unbind, remove), the parent
    /// unregisters (`change MDEV_STATE=unregistered`), then the driver lets go (`unbind`).
    pub fn finish_unbind(&mut self, name: &str) {
        for u in self.devices_on(name) {
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
}
