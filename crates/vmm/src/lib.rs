//! The guest launcher behind `vgpud-vmm` (one process per guest): a KVM VM running a flat
//! payload or a Linux kernel, a 16550 UART, a PCI host bridge and passthrough devices (one
//! slot each) behind the `PassthroughDevice` seam (emulated here, VFIO where the host has it).

pub mod bus;
pub mod cli;
pub mod config;
pub mod description;
pub mod device;
pub mod interrupts;
pub mod jail;
pub mod kvm;
pub mod linux;
pub mod msi;
pub mod msix;
pub mod payload;
pub mod pci;
pub mod seams;
pub mod seccomp;
pub mod uart;
pub mod vfio;

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use device::{EmulatedDevice, PassthroughDevice};
pub use jail::{FileArg, Jail};
pub use kvm::{GuestExit, StopPoint};
pub use vfio::{VfioError, VfioPassthrough};
pub use vgpud_launch::{Boot, DeviceSpec, InvalidLaunch, VmmConfig, MAX_MEMORY_MIB};

const IO_WINDOW: u64 = 0xc000;
const MEM_WINDOW: (u64, u64) = (0xc000_0000, 0xe000_0000);

impl From<InvalidLaunch> for VmmError {
    fn from(e: InvalidLaunch) -> Self {
        VmmError::InvalidArgument(e.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open /dev/kvm (make sure it exists and your user can open it)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("cannot use the KVM descriptor {0}")]
    KvmFd(String, #[source] std::io::Error),
    #[error("jail")]
    Jail(#[from] jail::JailError),
    #[error("seccomp")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("guest memory cannot be set up")]
    Memory,
    #[error("payload {0} does not fit in guest memory")]
    PayloadTooLarge(String),
    #[error("no vCPU to start")]
    NoVcpu,
    #[error("vCPU kick signal cannot be registered")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("vCPU thread cannot be started")]
    Thread(#[source] std::io::Error),
    #[error("device state lock was poisoned by a panicking vCPU")]
    Poisoned,
    #[error("guest made an exit the VMM does not handle: {0}")]
    UnexpectedExit(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("cannot read payload file {path}")]
    PayloadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("payload cannot be assembled")]
    Assemble(#[source] payload::PayloadError),
    #[error("cannot open serial log {path}")]
    SerialLog {
        path: String,
        source: std::io::Error,
    },
    #[error("device description")]
    Description(#[from] description::DescriptionError),
    #[error("VFIO device")]
    Vfio(#[from] vfio::VfioError),
    #[error("device BARs do not fit the 32-bit PCI windows (IO {IO_WINDOW:#x}.., memory 0xc0000000..0xe0000000)")]
    BarsTooLarge,
    #[error("Linux boot")]
    Linux(#[from] linux::LinuxError),
    #[error("KVM_IRQFD for the device interrupt failed")]
    Irqfd(#[source] kvm_ioctls::Error),
}

/// The process exit status for a guest exit: the payload's code, 0 for a final halt,
/// 143 (128 + SIGTERM) when stopped, 125 for a triple fault.
/// The descriptor vgpud gave for a shared VFIO node, or its /dev path (a VMM run by hand).
fn given_or(given: &Option<FileArg>, path: &str) -> FileArg {
    given.clone().unwrap_or_else(|| path.into())
}

pub fn exit_status(exit: &GuestExit) -> i32 {
    match exit {
        GuestExit::Code(c) => i32::from(*c),
        GuestExit::Halted => 0,
        GuestExit::Stopped => 143,
        GuestExit::Shutdown => 125,
    }
}

struct Tee(Vec<Box<dyn Write + Send>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for w in &mut self.0 {
            w.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        for w in &mut self.0 {
            w.flush()?;
        }
        Ok(())
    }
}

fn load_payload(name: &str) -> Result<payload::Payload, VmmError> {
    if let Some(built) = payload::builtin(name) {
        return built.map_err(VmmError::Assemble);
    }
    let file_error = |source| VmmError::PayloadFile {
        path: name.to_owned(),
        source,
    };
    let arg: FileArg = name
        .parse()
        .map_err(|e: String| file_error(std::io::Error::other(e)))?;
    let mut image = Vec::new();
    std::io::Read::read_to_end(&mut arg.open().map_err(file_error)?, &mut image)
        .map_err(file_error)?;
    Ok(payload::from_file(name, image))
}

enum Image {
    Flat(payload::Payload),
    Linux(linux::LinuxFiles),
}

/// Places every device's BARs like firmware, one device after the other in the 32-bit
/// windows, and writes each device's INTx line (`bus::INTX_GSIS`).
fn firmware_setup(devices: &mut [Box<dyn PassthroughDevice>]) -> Result<(), VmmError> {
    let (mut io_next, mut mem_next) = (IO_WINDOW, MEM_WINDOW.0);
    for (i, dev) in devices.iter_mut().enumerate() {
        let placed = pci::assign_addresses(dev.bars(), io_next, mem_next, MEM_WINDOW.1)
            .ok_or(VmmError::BarsTooLarge)?;
        for (index, base) in placed {
            let reg = 0x10 + 4 * index as u16;
            dev.config_write(reg, 4, base as u32);
            let slot = dev.bars().slot(index);
            if matches!(slot, pci::BarSlot::Mem64Low { .. }) {
                dev.config_write(reg + 4, 4, (base >> 32) as u32);
            }
            if let Some(r) = dev.bars().region(index) {
                let end = base + r.size;
                if r.io {
                    io_next = io_next.max(end);
                } else {
                    mem_next = mem_next.max(end);
                }
            }
        }
        let line = bus::INTX_GSIS
            .get(i)
            .copied()
            .ok_or(VmmError::InvalidArgument(format!(
                "a guest takes at most {} devices",
                bus::MAX_DEVICES
            )))?;
        dev.config_write(0x3c, 1, line);
    }
    Ok(())
}

/// Builds and runs one guest until it ends or `stop` is set (the binary sets it on SIGTERM).
/// `report` receives the VMM's own status lines (device kind) before the guest starts.
pub fn launch(
    config: &VmmConfig,
    stop: &AtomicBool,
    report: &mut dyn FnMut(&str),
) -> Result<GuestExit, VmmError> {
    config.validate()?;
    // Files are opened before the VM exists, so a bad path fails at once.
    let image = match &config.boot {
        Boot::Payload(name) => Image::Flat(load_payload(name)?),
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => Image::Linux(linux::LinuxFiles::open(kernel, initrd.as_ref(), cmdline)?),
    };
    let mut sinks: Vec<Box<dyn Write + Send>> = Vec::new();
    if let Some(path) = &config.serial_log {
        let file = path.create().map_err(|source| VmmError::SerialLog {
            path: path.to_string(),
            source,
        })?;
        sinks.push(Box::new(file));
    }
    if config.console {
        sinks.push(Box::new(std::io::stdout()));
    }
    let kvm_file = match &config.kvm {
        Some(arg) => Some(
            arg.open()
                .map_err(|e| VmmError::KvmFd(arg.to_string(), e))?,
        ),
        None => None,
    };
    let mut machine = kvm::Machine::new(kvm_file, config.memory_mib, config.vcpus)?;
    let mut devices: Vec<Box<dyn PassthroughDevice>> = Vec::new();
    let mut vfio = None;
    let mut adopted: Vec<&FileArg> = Vec::new();
    for spec in &config.devices {
        devices.push(match spec {
            DeviceSpec::Emulated(file) => {
                let desc = description::load_description(file)?;
                Box::new(EmulatedDevice::new(&desc)?)
            }
            DeviceSpec::Vfio(path) => Box::new(VfioPassthrough::open(
                path,
                &mut vfio,
                &machine.vm,
                &machine.mem,
            )?),
            DeviceSpec::VfioGroup { group, dir } => {
                // The descriptors themselves, not copies: the VMM holds just what it was
                // given. A group named again (a second device of it) goes as a copy, which
                // the container drops.
                let file = match adopted.contains(&group) {
                    true => group.open(),
                    false => group.adopt(),
                };
                adopted.push(group);
                let group = file.map_err(|e| VfioError::Open(group.to_string(), e))?;
                let container = || given_or(&config.vfio_container, "/dev/vfio/vfio").adopt();
                Box::new(VfioPassthrough::open_group(
                    group,
                    dir,
                    container,
                    &mut vfio,
                    &machine.vm,
                    &machine.mem,
                )?)
            }
            DeviceSpec::VfioCdev(file) => {
                // Taken over, as a group is: the VMM holds the very descriptor it was given
                // (a copy, as `open` would make, stayed open beside it). Named twice, the
                // second is a copy, which the kernel refuses to bind again.
                let cdev = match adopted.contains(&file) {
                    true => file.open(),
                    false => file.adopt(),
                };
                adopted.push(file);
                let cdev = cdev.map_err(|e| VfioError::Open(file.to_string(), e))?;
                let iommufd = || given_or(&config.iommufd, "/dev/iommu").adopt();
                Box::new(VfioPassthrough::open_cdev(
                    cdev,
                    format!("cdev {file}"),
                    iommufd,
                    &mut vfio,
                    &machine.vm,
                    &machine.mem,
                )?)
            }
        });
    }
    // Every file and device is open: nothing further needs root or the host's file system.
    if let Some(j) = config.jail {
        jail::enter(j)?;
    }
    let mut uart = uart::Uart::new(Box::new(Tee(sinks)));
    firmware_setup(&mut devices)?;
    let mut msi = false;
    for (i, dev) in devices.iter().enumerate() {
        match (dev.irq_eventfd(), dev.irq_resample_eventfd()) {
            (Some(fd), Some(resample)) => machine
                .vm
                .register_irqfd_with_resample(fd, resample, bus::INTX_GSIS[i])
                .map_err(VmmError::Irqfd)?,
            (Some(fd), None) => machine
                .vm
                .register_irqfd(fd, bus::INTX_GSIS[i])
                .map_err(VmmError::Irqfd)?,
            (None, _) => {}
        }
        if let Some(fd) = dev.msi_eventfd() {
            // Routed to the guest's MSI message once the guest programs and enables it.
            machine
                .vm
                .register_irqfd(fd, kvm::msi_gsi(i))
                .map_err(VmmError::Irqfd)?;
            msi = true;
        }
        let line = format!(
            "device: 00:{:02x}.0 {}",
            bus::device_slot(i),
            dev.describe()
        );
        report(&line);
        uart.write_host_line(&format!("vgpud-vmm: {line}"));
    }
    if devices.is_empty() {
        report("device: none");
    }
    match image {
        Image::Flat(payload) => machine.load(&payload)?,
        Image::Linux(files) => {
            let entry = linux::load(&machine.mem, files)?;
            machine.enter_linux(&entry)?;
        }
    }
    let ram_bars = devices.iter().any(|d| !d.ram_bars().is_empty());
    let mut io = bus::IoBus::new(uart, devices);
    if ram_bars {
        io = io.with_slots(kvm::BarSlots::new(machine.vm.clone()));
    }
    if msi {
        io = io.with_routes(kvm::IrqRouter::new(machine.vm.clone()));
    }
    let io = Arc::new(Mutex::new(io));
    if let Some(without) = &config.seccomp {
        seccomp::apply(without.as_deref())?;
    }
    let exit = machine.run(io.clone(), stop);
    if config.jail.is_some() {
        // vfio-ioctls' cdev devices unwrap their detach ioctls when dropped: in the jail the
        // devices are left to the kernel, which releases them when the VMM exits, right after
        // this returns.
        std::mem::forget(io);
        std::mem::forget(vfio);
    }
    let exit = exit?;
    if let Some(at) = machine.stop_point() {
        report(&format!(
            "stopped: vcpu0 rip={:#x} cr3={:#x}",
            at.rip, at.cr3
        ));
    }
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(&GuestExit::Code(3)), 3);
        assert_eq!(exit_status(&GuestExit::Halted), 0);
        assert_eq!(exit_status(&GuestExit::Stopped), 143);
    }

    #[test]
    fn firmware_places_t4_bars_and_line() {
        let desc = description::parse_description(
            "t4",
            r#"{"vendor":4318,"device":7864,"class_code":197120,"bars":[{"index":0,"size":16777216},
            {"index":1,"size":268435456,"prefetchable":true,"is64":true}]}"#,
        )
        .unwrap();
        let mut devs: Vec<Box<dyn PassthroughDevice>> =
            vec![Box::new(EmulatedDevice::new(&desc).unwrap())];
        firmware_setup(&mut devs).unwrap();
        assert_eq!(devs[0].config_read(0x10, 4), 0xd000_0000);
        assert_eq!(devs[0].config_read(0x14, 4), 0xc000_000c);
        assert_eq!(devs[0].config_read(0x3c, 1), bus::INTX_GSIS[0]);
    }

    #[test]
    fn firmware_places_two_devices_apart_with_their_own_lines() {
        let t4 = description::parse_description(
            "t4",
            r#"{"vendor":4318,"device":7864,"class_code":197120,"bars":[{"index":0,"size":16777216}]}"#,
        )
        .unwrap();
        let mtty = description::parse_description(
            "mtty",
            r#"{"vendor":17224,"device":12883,"class_code":458754,"bars":[{"index":0,"size":8,"io":true}]}"#,
        )
        .unwrap();
        let mut devs: Vec<Box<dyn PassthroughDevice>> = vec![
            Box::new(EmulatedDevice::new(&t4).unwrap()),
            Box::new(EmulatedDevice::new(&t4).unwrap()),
            Box::new(EmulatedDevice::new(&mtty).unwrap()),
        ];
        firmware_setup(&mut devs).unwrap();
        assert_eq!(devs[0].config_read(0x10, 4), 0xc000_0000);
        assert_eq!(devs[1].config_read(0x10, 4), 0xc100_0000);
        assert_eq!(devs[2].config_read(0x10, 4), 0xc001);
        let lines: Vec<u32> = devs.iter_mut().map(|d| d.config_read(0x3c, 1)).collect();
        assert_eq!(lines, bus::INTX_GSIS[..3]);
    }
}
