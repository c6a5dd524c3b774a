//! Client proxies for vgpud's interfaces, used by vgpuctl, the libvirt hook and tests.

use std::collections::HashMap;

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

#[proxy(
    interface = "org.vgpud1.Manager",
    default_service = "org.vgpud",
    default_path = "/org/vgpud"
)]
pub trait Manager {
    fn create_device(
        &self,
        type_spec: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn define_device(
        &self,
        type_spec: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn get_device(&self, uuid: &str) -> zbus::Result<OwnedObjectPath>;
    fn launch_guest(
        &self,
        devices: &[OwnedObjectPath],
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn reload_policy(&self) -> zbus::Result<String>;
    #[allow(clippy::type_complexity)]
    fn plan(&self) -> zbus::Result<Vec<(String, String, String, String, u32, Vec<String>)>>;
    fn reshape(
        &self,
        parent: &str,
        type_spec: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[allow(clippy::type_complexity)]
    fn get_capacity(
        &self,
        filter: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<Vec<(String, u32, Vec<(String, String, i32, u32)>)>>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn problems(&self) -> zbus::Result<Vec<String>>;
}

#[proxy(interface = "org.vgpud1.Parent", default_service = "org.vgpud")]
pub trait Parent {
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sysfs_path(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn vendor_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn device_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn driver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn numa_node(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn iommu_group(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn backend(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn physical_function(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn types(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[proxy(interface = "org.vgpud1.MdevType", default_service = "org.vgpud")]
pub trait MdevType {
    fn create(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn description(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn device_api(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn available_instances(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn parent(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[proxy(interface = "org.vgpud1.Device", default_service = "org.vgpud")]
pub trait Device {
    fn remove(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn start(&self) -> zbus::Result<()>;
    fn stop(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn define(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
    fn modify(&self, attrs: &[(&str, &str)], options: HashMap<&str, Value<'_>>)
        -> zbus::Result<()>;
    fn undefine(&self) -> zbus::Result<()>;
    fn set_autostart(&self, autostart: bool) -> zbus::Result<()>;
    #[zbus(property)]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn persistent(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn autostart(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn owner(&self) -> zbus::Result<i64>;
    #[zbus(property)]
    fn origin(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn parent(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property, name = "Type")]
    fn type_path(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn type_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn in_use(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn sysfs_path(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn iommu_group(&self) -> zbus::Result<i32>;
}

#[proxy(interface = "org.vgpud1.Guest", default_service = "org.vgpud")]
pub trait Guest {
    fn stop(&self) -> zbus::Result<()>;
    fn forget(&self) -> zbus::Result<()>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn pid(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
    #[zbus(property)]
    fn serial_log(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn exit_status(&self) -> zbus::Result<i32>;
    #[zbus(property)]
    fn emulated(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn uuid(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn vfio_api(&self) -> zbus::Result<String>;
}
