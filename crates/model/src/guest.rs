//! What a guest is given, as the daemon, its clients, the simulator and the VMM all name it:
//! the PCI function a guest sees for one device (ids, class, BARs: the simulator's profiles
//! describe it, `vgpud-sim ctl DIR guest-pci UUID` prints it, the VMM's emulated device is
//! built from it) and the payloads the VMM has built in.

use serde::{Deserialize, Serialize};

/// The payloads `vgpud-vmm --payload NAME` builds itself (anything else is a file).
pub const BUILTIN_PAYLOADS: &[&str] = &["pci-probe", "hello", "loop", "halt"];

/// The PCI function a guest sees when the vGPU is attached through VFIO.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestPci {
    pub vendor: u16,
    pub device: u16,
    #[serde(default)]
    pub subsystem_vendor: u16,
    #[serde(default)]
    pub subsystem_device: u16,
    pub class_code: u32,
    #[serde(default)]
    pub bars: Vec<GuestBar>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GuestBar {
    pub index: u8,
    pub size: u64,
    #[serde(default)]
    pub io: bool,
    #[serde(default)]
    pub prefetchable: bool,
    #[serde(default)]
    pub is64: bool,
}
