//! The seams between the device bus and the hypervisor: what the bus asks of KVM (interrupt
//! routes, memory slots) and what KVM's vCPU loop hands the bus (the exits it does not handle
//! itself). `bus` and `kvm` each depend on these traits, never on each other.

use super::msi::MsiMessage;
use super::VmmError;

/// What the vCPU loop does after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Exit(u8),
}

/// The guest's port I/O and MMIO exits, as a vCPU hands them over.
pub trait ExitHandler: Send {
    fn pio_read(&mut self, port: u16, data: &mut [u8]);
    fn pio_write(&mut self, port: u16, data: &[u8]) -> Action;
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]);
    fn mmio_write(&mut self, addr: u64, data: &[u8]);
}

/// Where each device's message-signalled interrupt goes: the eventfd of device `device` is
/// bound to one interrupt route, which follows the message the guest programmed.
pub trait InterruptRoutes: Send {
    /// Routes device `device`'s MSI to `message`, or removes the route for `None`.
    fn route_msi(&mut self, device: usize, message: Option<MsiMessage>) -> Result<(), VmmError>;
}

/// A BAR backed by host memory, which the VMM maps into the guest as a memory slot wherever
/// the guest puts the BAR (no exits on access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamBar {
    pub index: usize,
    pub host_addr: u64,
    pub size: u64,
}

/// Guest-physical placement of devices' host-memory BARs.
pub trait MemorySlots: Send {
    /// Puts `ram` (BAR `ram.index` of device `device`) at guest address `base`, or takes it
    /// out of the guest for `None` (the BAR does not decode).
    fn place(&mut self, device: usize, ram: &RamBar, base: Option<u64>) -> Result<(), VmmError>;
}
