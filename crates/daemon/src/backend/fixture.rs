//! Test fixtures: a sysfs tree in a tempdir with the kernel's real layout and relative
//! symlinks, so the backends read it exactly as they read /sys. Each test builds its own.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::backend::sysfs::SysfsRoot;

/// A Tesla T4 style mdev parent (model 1) with two types.
pub(crate) const GPU: &str = "0000:3b:00.0";
pub(crate) const GPU_DEV: &str = "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0";
pub(crate) const MTTY_DEV: &str = "devices/virtual/mtty/mtty";
/// An A100 style SR-IOV PF whose two VFs are mdev parents (model 2).
pub(crate) const PF_A100: &str = "0000:41:00.0";
pub(crate) const PF_A100_DEV: &str = "devices/pci0000:40/0000:40:01.1/0000:41:00.0";
pub(crate) const VF_A100: [&str; 2] = ["0000:41:00.4", "0000:41:00.5"];
/// An L40S style VF managed through NVIDIA's vendor sysfs (model 3).
pub(crate) const VF_L40S: &str = "0000:c1:00.4";
pub(crate) const VF_L40S_DEV: &str = "devices/pci0000:c0/0000:c0:01.1/0000:c1:00.4";
pub(crate) const PF_L40S_DEV: &str = "devices/pci0000:c0/0000:c0:01.1/0000:c1:00.0";

pub(crate) const U1: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";
pub(crate) const U2: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";

/// `<tmp>/sys` is the root; `<tmp>/outside` is a place no read may reach.
pub(crate) struct Fixture {
    tmp: tempfile::TempDir,
    sys: PathBuf,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sys = tmp.path().join("sys");
        for dir in [
            "class/mdev_bus",
            "bus/mdev/devices",
            "bus/pci/devices",
            "bus/pci/drivers/nvidia",
            "bus/mdev/drivers/nvidia-vgpu-vfio",
            "bus/mdev/drivers/mtty",
        ] {
            fs::create_dir_all(sys.join(dir)).expect("mkdir");
        }
        fs::create_dir_all(tmp.path().join("outside")).expect("mkdir");
        fs::write(tmp.path().join("outside/secret"), "0x10de\n").expect("write");
        Fixture { tmp, sys }
    }

    pub(crate) fn root(&self) -> SysfsRoot {
        SysfsRoot::new(&self.sys).expect("root")
    }

    pub(crate) fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    pub(crate) fn write(&self, rel: &str, text: &str) {
        let p = self.sys.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    pub(crate) fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.sys.join(rel)).expect("read")
    }

    pub(crate) fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.sys.join(rel)).expect("mkdir");
    }

    /// A relative link at `rel` to `target` (both relative to the root), as the kernel makes.
    pub(crate) fn link(&self, rel: &str, target: &str) {
        let depth = rel.matches('/').count();
        let relative = format!("{}{target}", "../".repeat(depth));
        self.link_to(rel, Path::new(&relative));
    }

    /// A link at `rel` to exactly `target` (absolute, or relative to the link's directory).
    pub(crate) fn link_to(&self, rel: &str, target: &Path) {
        let p = self.sys.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        symlink(target, p).expect("symlink");
    }

    /// A PCI function at `dev` with its ids, driver, IOMMU group and bus/pci/devices link.
    pub(crate) fn pci(&self, dev: &str, device_id: &str, group: u32) {
        let addr = dev.rsplit('/').next().expect("addr");
        self.write(&format!("{dev}/vendor"), "0x10de\n");
        self.write(&format!("{dev}/device"), &format!("{device_id}\n"));
        self.write(&format!("{dev}/class"), "0x030200\n");
        self.write(&format!("{dev}/subsystem_vendor"), "0x10de\n");
        self.write(&format!("{dev}/subsystem_device"), "0x12a2\n");
        self.write(&format!("{dev}/numa_node"), "-1\n");
        self.mkdir(&format!("kernel/iommu_groups/{group}"));
        self.link(
            &format!("{dev}/iommu_group"),
            &format!("kernel/iommu_groups/{group}"),
        );
        self.link(&format!("{dev}/driver"), "bus/pci/drivers/nvidia");
        self.link(&format!("bus/pci/devices/{addr}"), dev);
    }

    /// Registers the device at `dev` with the mdev core under its directory name.
    pub(crate) fn mdev_parent(&self, dev: &str) {
        let name = dev.rsplit('/').next().expect("name");
        self.link(&format!("class/mdev_bus/{name}"), dev);
    }

    pub(crate) fn mdev_type(
        &self,
        dev: &str,
        id: &str,
        available: u32,
        name: Option<&str>,
        description: Option<&str>,
    ) {
        let t = format!("{dev}/mdev_supported_types/{id}");
        self.write(
            &format!("{t}/available_instances"),
            &format!("{available}\n"),
        );
        self.write(&format!("{t}/device_api"), "vfio-pci\n");
        self.write(&format!("{t}/create"), "");
        self.mkdir(&format!("{t}/devices"));
        if let Some(name) = name {
            self.write(&format!("{t}/name"), &format!("{name}\n"));
        }
        if let Some(d) = description {
            self.write(&format!("{t}/description"), &format!("{d}\n"));
        }
    }

    /// An mdev `uuid` on the parent at `dev`; `type_id` None = the link is not there yet.
    pub(crate) fn mdev_device(&self, dev: &str, uuid: &str, type_id: Option<&str>, group: u32) {
        let d = format!("{dev}/{uuid}");
        self.write(&format!("{d}/remove"), "");
        self.mkdir(&format!("kernel/iommu_groups/{group}"));
        self.link(
            &format!("{d}/iommu_group"),
            &format!("kernel/iommu_groups/{group}"),
        );
        if let Some(t) = type_id {
            self.link_to(
                &format!("{d}/mdev_type"),
                Path::new(&format!("../mdev_supported_types/{t}")),
            );
            self.link(&format!("{d}/driver"), "bus/mdev/drivers/nvidia-vgpu-vfio");
        }
        self.link(&format!("bus/mdev/devices/{uuid}"), &d);
    }

    /// Model 1: a T4 with one type that has name and description and one that has neither.
    pub(crate) fn gpu_with_two_types(&self) {
        self.pci(GPU_DEV, "0x1eb8", 12);
        self.write(&format!("{GPU_DEV}/numa_node"), "1\n");
        self.mdev_parent(GPU_DEV);
        self.mdev_type(
            GPU_DEV,
            "nvidia-231",
            8,
            Some("GRID T4-2Q"),
            Some("num_heads=4, frl_config=60, framebuffer=2048M"),
        );
        self.mdev_type(GPU_DEV, "nvidia-232", 4, None, None);
    }

    /// The mtty sample: a virtual parent without PCI ids, driver or NUMA node.
    pub(crate) fn mtty(&self) {
        self.mkdir(MTTY_DEV);
        self.mdev_parent(MTTY_DEV);
        self.mdev_type(MTTY_DEV, "mtty-1", 24, Some("Single port serial"), None);
        self.mdev_type(MTTY_DEV, "mtty-2", 12, Some("Dual port serial"), None);
    }

    /// Model 2: a PF (not a parent) whose two VFs are mdev parents.
    pub(crate) fn sriov_a100(&self) {
        self.pci(PF_A100_DEV, "0x20b0", 30);
        for (i, vf) in VF_A100.iter().enumerate() {
            let dev = format!("devices/pci0000:40/0000:40:01.1/{vf}");
            self.pci(&dev, "0x20b0", 31 + i as u32);
            self.link(&format!("{dev}/physfn"), PF_A100_DEV);
            self.link(&format!("{PF_A100_DEV}/virtfn{i}"), &dev);
            self.mdev_parent(&dev);
            self.mdev_type(&dev, "nvidia-500", 1, Some("GRID A100-4C"), None);
        }
    }

    /// Model 3: a VF with NVIDIA's vendor files (and its PF, which has none).
    pub(crate) fn nvidia_vendor_vf(&self, addr: &str, creatable: &str, current: u32) {
        let dev = format!("devices/pci0000:c0/0000:c0:01.1/{addr}");
        if !self.sys.join(PF_L40S_DEV).exists() {
            self.pci(PF_L40S_DEV, "0x26b9", 40);
        }
        let index = addr.rsplit('.').next().expect("function");
        self.pci(&dev, "0x26b9", 41);
        self.link(&format!("{dev}/physfn"), PF_L40S_DEV);
        self.link(&format!("{PF_L40S_DEV}/virtfn{index}"), &dev);
        self.write(&format!("{dev}/nvidia/creatable_vgpu_types"), creatable);
        self.write(
            &format!("{dev}/nvidia/current_vgpu_type"),
            &format!("{current}\n"),
        );
    }
}
