//! The KVM side: VM with guest RAM and the in-kernel irqchip, vCPUs entered in 32-bit
//! protected mode (flat payloads) or 64-bit long mode (Linux), and the run loop that ends on the debug exit port, on a HLT with
//! interrupts disabled, on a triple fault, or when asked to stop (SIGTERM).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_fpu, kvm_irq_routing_entry, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_pit_config,
    kvm_segment, kvm_sregs, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::linux::{LinuxEntry, BOOT_STACK, PML4};
use super::msi::MsiMessage;
use super::payload::Payload;
use super::seams::{Action, ExitHandler, InterruptRoutes, MemorySlots, RamBar};
use super::VmmError;

const GDT_ADDR: u64 = 0x500;
const TSS_ADDR: usize = 0xfffb_d000;
const RFLAGS_IF: u64 = 1 << 9;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;
/// How often a running vCPU is kicked out of KVM_RUN to look at stop requests and halts.
const KICK_INTERVAL: Duration = Duration::from_millis(50);

/// Why the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The payload wrote this code to the debug exit port.
    Code(u8),
    /// vCPU 0 halted with interrupts disabled: nothing can wake it.
    Halted,
    /// The VMM was asked to stop (SIGTERM).
    Stopped,
    /// Triple fault.
    Shutdown,
}

/// Flat GDT: null, code 0x08, data 0x10 (base 0, limit 4 GiB).
pub fn gdt_entries() -> [u64; 3] {
    [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff]
}

/// The GDT the 64-bit boot protocol asks for: __BOOT_CS at 0x10 (64-bit code), __BOOT_DS
/// at 0x18, both flat.
pub fn long_mode_gdt_entries() -> [u64; 4] {
    [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
}
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A 64-bit code segment: L set, D clear (a set D with L is reserved).
fn long_mode_code(selector: u16) -> kvm_segment {
    kvm_segment {
        db: 0,
        l: 1,
        ..segment(selector, true)
    }
}

/// Sets LVT field `mode` (delivery mode bits 8..10, unmasked) as firmware does for LINT0/1.
pub fn lvt_with_mode(reg: u32, mode: u32) -> u32 {
    ((reg & !0x700) | (mode << 8)) & !(1 << 16)
}

/// Where vCPU 0 was when the guest was stopped: for the stop report and for tests that
/// check how far a guest got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPoint {
    pub rip: u64,
    pub cr3: u64,
}

/// GSIs 0..24 are the in-kernel PICs and IOAPIC; MSI routes start after them.
pub const MSI_GSI_BASE: u32 = 24;

/// The GSI of device `device`'s MSI eventfd (bound with KVM_IRQFD, routed by `IrqRouter`).
pub fn msi_gsi(device: usize) -> u32 {
    MSI_GSI_BASE + device as u32
}
const IOAPIC_PINS: u32 = 24;
const PIC_LINES: u32 = 16;

/// The whole GSI routing table: KVM_SET_GSI_ROUTING replaces KVM's default table, so its
/// irqchip routes (IOAPIC pins 0..24, PIC lines 0..16, as KVM sets them up) come first, then
/// one MSI route per `(gsi, message)`.
pub fn routing_table(msis: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
        e
    };
    let mut table = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        table.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < PIC_LINES {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            table.push(irqchip(gsi, chip, gsi % 8));
        }
    }
    for (gsi, m) in msis {
        let mut e = kvm_irq_routing_entry {
            gsi: *gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi = kvm_irq_routing_msi {
            address_lo: m.address as u32,
            address_hi: (m.address >> 32) as u32,
            data: m.data,
            ..Default::default()
        };
        table.push(e);
    }
    table
}

/// Keeps KVM's GSI routing in step with the MSI messages guests program.
pub struct IrqRouter {
    vm: Arc<VmFd>,
    msis: BTreeMap<u32, MsiMessage>,
}

impl IrqRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msis: BTreeMap::new(),
        }
    }

    /// Routes `gsi` to `message`, or removes its route for `None`; no ioctl when unchanged.
    pub fn set_msi(&mut self, gsi: u32, message: Option<MsiMessage>) -> Result<(), VmmError> {
        let changed = match message {
            Some(m) => self.msis.insert(gsi, m) != Some(m),
            None => self.msis.remove(&gsi).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let routing = KvmIrqRouting::from_entries(&routing_table(&self.msis))
            .map_err(|_| VmmError::InvalidArgument("GSI routing table too large".into()))?;
        self.vm
            .set_gsi_routing(&routing)
            .map_err(|e| VmmError::Kvm("KVM_SET_GSI_ROUTING", e))
    }
}

impl InterruptRoutes for IrqRouter {
    fn route_msi(&mut self, device: usize, message: Option<MsiMessage>) -> Result<(), VmmError> {
        self.set_msi(msi_gsi(device), message)
    }
}

/// Maps host-memory BARs into the guest as KVM memory slots and moves a slot when the
/// guest moves its BAR (or drops it when the BAR stops decoding).
pub struct BarSlots {
    vm: Arc<VmFd>,
    mapped: BTreeMap<u32, u64>,
}

impl BarSlots {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            mapped: BTreeMap::new(),
        }
    }

    /// The KVM slot of BAR `bar` of device `device` (slot 0 is guest RAM).
    pub fn slot_id(device: usize, bar: usize) -> u32 {
        1 + (device * 6 + bar) as u32
    }

    /// Puts `ram` at guest address `base` (`None`: not decoding, no slot); no ioctl when
    /// nothing changes.
    pub fn place(&mut self, slot: u32, ram: &RamBar, base: Option<u64>) -> Result<(), VmmError> {
        let current = self.mapped.get(&slot).copied();
        if current == base {
            return Ok(());
        }
        let region = |guest_phys_addr: u64, memory_size: u64| kvm_userspace_memory_region {
            slot,
            guest_phys_addr,
            memory_size,
            userspace_addr: ram.host_addr,
            flags: 0,
        };
        if let Some(old) = current {
            // SAFETY: a size of 0 deletes the slot; no memory is handed to KVM.
            unsafe { self.vm.set_user_memory_region(region(old, 0)) }
                .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION (delete BAR slot)", e))?;
            self.mapped.remove(&slot);
        }
        if let Some(new) = base {
            // SAFETY: `ram` is a live mapping of `ram.size` bytes owned by its device, which the
            // bus keeps until every vCPU has stopped; slots of different BARs never share one.
            unsafe { self.vm.set_user_memory_region(region(new, ram.size)) }
                .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION (BAR slot)", e))?;
            self.mapped.insert(slot, new);
        }
        Ok(())
    }
}

impl MemorySlots for BarSlots {
    fn place(&mut self, device: usize, ram: &RamBar, base: Option<u64>) -> Result<(), VmmError> {
        BarSlots::place(self, Self::slot_id(device, ram.index), ram, base)
    }
}

pub struct Machine {
    _kvm: Kvm,
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    stop_point: Arc<Mutex<Option<StopPoint>>>,
}

impl Machine {
    /// A VM on `kvm` (/dev/kvm as the caller opened it), or on /dev/kvm opened here.
    pub fn new(
        kvm: Option<std::fs::File>,
        memory_mib: u32,
        vcpu_count: u8,
    ) -> Result<Self, VmmError> {
        let kvm = match kvm {
            Some(file) => {
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: the descriptor is an open file that this call owns and hands over.
                unsafe { Kvm::from_raw_fd(file.into_raw_fd()) }
            }
            None => Kvm::new().map_err(VmmError::OpenKvm)?,
        };
        let vm = kvm
            .create_vm()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?;
        vm.set_tss_address(TSS_ADDR)
            .map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let size = usize::try_from(u64::from(memory_mib) << 20).map_err(|_| VmmError::Memory)?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)])
            .map_err(|_| VmmError::Memory)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmmError::Memory)?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which `Machine` keeps for as
            // long as the VM exists, and slots do not overlap.
            unsafe { vm.set_user_memory_region(r) }
                .map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let mut vcpus = Vec::new();
        for id in 0..vcpu_count {
            let vcpu = vm
                .create_vcpu(u64::from(id))
                .map_err(|e| VmmError::Kvm("KVM_CREATE_VCPU", e))?;
            vcpu.set_cpuid2(&cpuid)
                .map_err(|e| VmmError::Kvm("KVM_SET_CPUID2", e))?;
            vcpus.push(vcpu);
        }
        Ok(Self {
            _kvm: kvm,
            vm: Arc::new(vm),
            mem,
            vcpus,
            stop_point: Arc::new(Mutex::new(None)),
        })
    }

    /// Writes the GDT and the payload, and points vCPU 0 at the entry in protected mode.
    /// Other vCPUs stay in wait-for-SIPI, as on real hardware.
    pub fn load(&mut self, payload: &Payload) -> Result<(), VmmError> {
        let mut sregs =
            self.sregs_on_gdt(&gdt_entries(), segment(0x08, true), segment(0x10, false))?;
        sregs.cr0 |= CR0_PE;
        let end = payload.load_addr + payload.image.len() as u64;
        if end > self.mem.last_addr().0 {
            return Err(VmmError::PayloadTooLarge(payload.name.clone()));
        }
        self.mem
            .write_slice(&payload.image, GuestAddress(payload.load_addr))
            .map_err(|_| VmmError::Memory)?;
        let bsp = self.bsp()?;
        bsp.set_sregs(&sregs)
            .map_err(|e| VmmError::Kvm("KVM_SET_SREGS", e))?;
        let mut regs = bsp
            .get_regs()
            .map_err(|e| VmmError::Kvm("KVM_GET_REGS", e))?;
        regs.rip = payload.entry;
        regs.rflags = 0x2;
        bsp.set_regs(&regs)
            .map_err(|e| VmmError::Kvm("KVM_SET_REGS", e))?;
        self.wire_lapic_lines()
    }

    /// Points vCPU 0 at a loaded Linux kernel's 64-bit entry as the boot protocol says:
    /// long mode with the identity page tables `linux` wrote, __BOOT_CS/__BOOT_DS, interrupts
    /// off, RSI = the zero page. Also gives the guest the in-kernel PIT a kernel expects.
    pub fn enter_linux(&mut self, entry: &LinuxEntry) -> Result<(), VmmError> {
        self.vm
            .create_pit2(kvm_pit_config::default())
            .map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;
        let mut sregs = self.sregs_on_gdt(
            &long_mode_gdt_entries(),
            long_mode_code(BOOT_CS),
            segment(BOOT_DS, false),
        )?;
        let bsp = self.bsp()?;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr3 = PML4;
        sregs.cr4 |= CR4_PAE;
        sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
        sregs.efer |= EFER_LME | EFER_LMA;
        bsp.set_sregs(&sregs)
            .map_err(|e| VmmError::Kvm("KVM_SET_SREGS", e))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        bsp.set_fpu(&fpu)
            .map_err(|e| VmmError::Kvm("KVM_SET_FPU", e))?;
        let mut regs = bsp
            .get_regs()
            .map_err(|e| VmmError::Kvm("KVM_GET_REGS", e))?;
        regs.rip = entry.entry;
        regs.rsi = entry.zero_page;
        regs.rsp = BOOT_STACK;
        regs.rbp = BOOT_STACK;
        regs.rflags = 0x2;
        bsp.set_regs(&regs)
            .map_err(|e| VmmError::Kvm("KVM_SET_REGS", e))?;
        self.wire_lapic_lines()
    }

    /// Where vCPU 0 stood when `run` stopped it (`None` if it ended by itself).
    pub fn stop_point(&self) -> Option<StopPoint> {
        self.stop_point.lock().ok().and_then(|p| *p)
    }

    fn bsp(&self) -> Result<&VcpuFd, VmmError> {
        self.vcpus.first().ok_or(VmmError::NoVcpu)
    }

    /// vCPU 0's special registers with the GDT `entries` written to guest memory and loaded,
    /// CS = `code` and every data segment = `data`; the caller adds the control registers
    /// and sets them.
    fn sregs_on_gdt(
        &self,
        entries: &[u64],
        code: kvm_segment,
        data: kvm_segment,
    ) -> Result<kvm_sregs, VmmError> {
        self.write_gdt(entries)?;
        let mut sregs = self
            .bsp()?
            .get_sregs()
            .map_err(|e| VmmError::Kvm("KVM_GET_SREGS", e))?;
        sregs.cs = code;
        for seg in [
            &mut sregs.ds,
            &mut sregs.es,
            &mut sregs.fs,
            &mut sregs.gs,
            &mut sregs.ss,
        ] {
            *seg = data;
        }
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = (entries.len() * 8 - 1) as u16;
        Ok(sregs)
    }

    fn write_gdt(&self, entries: &[u64]) -> Result<(), VmmError> {
        for (i, entry) in entries.iter().enumerate() {
            self.mem
                .write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))
                .map_err(|_| VmmError::Memory)?;
        }
        Ok(())
    }

    /// LINT0 = ExtINT so the 8259's output reaches the CPU, LINT1 = NMI.
    fn wire_lapic_lines(&self) -> Result<(), VmmError> {
        let bsp = self.bsp()?;
        let mut lapic = bsp
            .get_lapic()
            .map_err(|e| VmmError::Kvm("KVM_GET_LAPIC", e))?;
        for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let mut bytes = [0u8; 4];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = lapic.regs[offset + i] as u8;
            }
            let value = lvt_with_mode(u32::from_le_bytes(bytes), mode);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[offset + i] = *b as _;
            }
        }
        bsp.set_lapic(&lapic)
            .map_err(|e| VmmError::Kvm("KVM_SET_LAPIC", e))?;
        Ok(())
    }

    /// Runs all vCPUs until the guest ends or `stop` is set; joins every vCPU thread.
    pub fn run<H: ExitHandler + 'static>(
        &mut self,
        bus: Arc<Mutex<H>>,
        stop: &AtomicBool,
    ) -> Result<GuestExit, VmmError> {
        extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        register_signal_handler(SIGRTMIN(), kick).map_err(VmmError::Signal)?;
        let (tx, rx) = mpsc::channel();
        let halt_all = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (id, vcpu) in self.vcpus.drain(..).enumerate() {
            let (tx, bus, halt) = (tx.clone(), bus.clone(), halt_all.clone());
            let stop_point = (id == 0).then(|| self.stop_point.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let result = vcpu_loop(id, vcpu, &bus, &halt, stop_point);
                    let _ = tx.send(result);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    halt_all.store(true, Ordering::SeqCst);
                    stop_threads(&threads);
                    return Err(VmmError::Thread(e));
                }
            }
        }
        drop(tx);
        let outcome = loop {
            if stop.load(Ordering::SeqCst) {
                break Ok(GuestExit::Stopped);
            }
            match rx.recv_timeout(KICK_INTERVAL) {
                Ok(Some(result)) => break result,
                Ok(None) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => kick_all(&threads),
                Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(GuestExit::Stopped),
            }
        };
        halt_all.store(true, Ordering::SeqCst);
        stop_threads(&threads);
        for t in threads {
            let _ = t.join();
        }
        outcome
    }
}

fn kick_all(threads: &[JoinHandle<()>]) {
    use std::os::unix::thread::JoinHandleExt;
    for t in threads {
        if !t.is_finished() {
            // SAFETY: the thread is not joined (we hold its handle), so the pthread_t is
            // valid; the signal has a no-op handler and only interrupts KVM_RUN.
            unsafe { libc::pthread_kill(t.as_pthread_t(), SIGRTMIN()) };
        }
    }
}

fn stop_threads(threads: &[JoinHandle<()>]) {
    while threads.iter().any(|t| !t.is_finished()) {
        kick_all(threads);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `Some(result)` ends the guest; `None` means this vCPU stopped because it was told to.
type VcpuResult = Option<Result<GuestExit, VmmError>>;

fn vcpu_loop<H: ExitHandler>(
    id: usize,
    mut vcpu: VcpuFd,
    bus: &Mutex<H>,
    halt_all: &AtomicBool,
    stop_point: Option<Arc<Mutex<Option<StopPoint>>>>,
) -> VcpuResult {
    loop {
        if halt_all.load(Ordering::SeqCst) {
            if let (Some(slot), Ok(regs), Ok(sregs)) =
                (stop_point, vcpu.get_regs(), vcpu.get_sregs())
            {
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(StopPoint {
                        rip: regs.rip,
                        cr3: sregs.cr3,
                    });
                }
            }
            return None;
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                if id == 0 && halted_for_good(&vcpu) {
                    return Some(Ok(GuestExit::Halted));
                }
                continue;
            }
            Err(e) => return Some(Err(VmmError::Kvm("KVM_RUN", e))),
        };
        let Ok(mut bus) = bus.lock() else {
            return Some(Err(VmmError::Poisoned));
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                if let Action::Exit(code) = bus.pio_write(port, data) {
                    return Some(Ok(GuestExit::Code(code)));
                }
            }
            VcpuExit::IoIn(port, data) => bus.pio_read(port, data),
            VcpuExit::MmioRead(addr, data) => bus.mmio_read(addr, data),
            VcpuExit::MmioWrite(addr, data) => bus.mmio_write(addr, data),
            VcpuExit::Hlt => {
                drop(bus);
                if let Ok(regs) = vcpu.get_regs() {
                    if regs.rflags & RFLAGS_IF == 0 {
                        return Some(Ok(GuestExit::Halted));
                    }
                }
            }
            VcpuExit::Shutdown => return Some(Ok(GuestExit::Shutdown)),
            other => {
                let what = format!("{other:?}");
                drop(bus);
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Some(Err(VmmError::UnexpectedExit(format!(
                    "{what} at rip {rip:#x}"
                ))));
            }
        }
    }
}

/// With the in-kernel irqchip a HLT never exits to us, so a kicked vCPU is inspected instead.
fn halted_for_good(vcpu: &VcpuFd) -> bool {
    let Ok(mp) = vcpu.get_mp_state() else {
        return false;
    };
    let Ok(regs) = vcpu.get_regs() else {
        return false;
    };
    mp.mp_state == KVM_MP_STATE_HALTED && regs.rflags & RFLAGS_IF == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_is_flat_code_and_data() {
        let g = gdt_entries();
        assert_eq!(g[0], 0);
        // access byte: present, ring 0, code exec/read (0x9a) and data read/write (0x92)
        assert_eq!((g[1] >> 40) & 0xff, 0x9a);
        assert_eq!((g[2] >> 40) & 0xff, 0x92);
        // granularity 4 KiB and 32-bit default size
        assert_eq!((g[1] >> 52) & 0xc, 0xc);
    }

    #[test]
    fn long_mode_gdt_has_boot_cs_and_ds() {
        let g = long_mode_gdt_entries();
        let cs = g[usize::from(BOOT_CS / 8)];
        let ds = g[usize::from(BOOT_DS / 8)];
        assert_eq!((cs >> 40) & 0xff, 0x9b, "present ring-0 code, accessed");
        assert_eq!((cs >> 53) & 1, 1, "L: 64-bit code");
        assert_eq!((cs >> 54) & 1, 0, "D must be clear with L");
        assert_eq!((ds >> 40) & 0xff, 0x93);
        let seg = long_mode_code(BOOT_CS);
        assert_eq!((seg.l, seg.db, seg.selector), (1, 0, 0x10));
    }

    #[test]
    fn routing_table_keeps_kvm_defaults_and_adds_msi() {
        let mut msis = BTreeMap::new();
        msis.insert(
            MSI_GSI_BASE,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x40,
            },
        );
        let t = routing_table(&msis);
        assert_eq!(t.len(), 24 + 16 + 1);
        let chips: Vec<(u32, u32, u32)> = t
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP && e.gsi == 10)
            // SAFETY: irqchip is the union member written for IRQCHIP entries.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert_eq!(
            chips,
            [(10, KVM_IRQCHIP_IOAPIC, 10), (10, KVM_IRQCHIP_PIC_SLAVE, 2)]
        );
        let msi = t.last().unwrap();
        assert_eq!((msi.gsi, msi.type_), (MSI_GSI_BASE, KVM_IRQ_ROUTING_MSI));
        // SAFETY: msi is the union member written for MSI entries.
        let m = unsafe { msi.u.msi };
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_1000, 1, 0x40));
        assert!(t
            .iter()
            .all(|e| e.gsi < 24 || e.type_ == KVM_IRQ_ROUTING_MSI));
    }

    #[test]
    fn bar_slots_never_collide_with_ram_or_each_other() {
        let mut ids: Vec<u32> = (0..4)
            .flat_map(|d| (0..6).map(move |b| BarSlots::slot_id(d, b)))
            .collect();
        assert!(ids.iter().all(|&i| i != 0));
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn lvt_mode_unmasks_and_sets_delivery() {
        assert_eq!(lvt_with_mode(0x0001_0000, APIC_MODE_EXTINT), 0x700);
        assert_eq!(lvt_with_mode(0x0001_0700, APIC_MODE_NMI), 0x400);
    }
}
