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
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use device::{EmulatedDevice, PassthroughDevice};
pub use jail::{FileArg, Jail};
pub use kvm::{GuestExit, StopPoint};
pub use vfio::{VfioError, VfioPassthrough};

const IO_WINDOW: u64 = 0xc000;
const MEM_WINDOW: (u64, u64) = (0xc000_0000, 0xe000_0000);
const MAX_MEMORY_MIB: u32 = 3 * 1024;

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

/// A passthrough device of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A PCI function built from a JSON description (`vgpud-sim ctl DIR guest-pci UUID`).
    Emulated(FileArg),
    /// A VFIO device by sysfs path (the group API; the VMM opens its group and the container
    /// by their /dev paths: run by hand, never jailed).
    Vfio(PathBuf),
    /// A VFIO device of a group (/dev/vfio/<group> as vgpud opened it) attached to
    /// `--vfio-container`; `dir`, its sysfs directory, only names it (its last element is what
    /// VFIO_GROUP_GET_DEVICE_FD takes) and is never opened.
    VfioGroup { group: FileArg, dir: PathBuf },
    /// A VFIO device cdev (/dev/vfio/devices/vfioN) as vgpud opened it, bound to `--iommufd`.
    VfioCdev(FileArg),
}

impl std::str::FromStr for DeviceSpec {
    type Err = VmmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            VmmError::InvalidArgument(format!(
                "device {s:?} must be emulated:FILE.json, vfio:/sys/bus/mdev/devices/UUID, vfio-group:fd:N:/sys/... or vfio-cdev:fd:N"
            ))
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "emulated" => Ok(Self::Emulated(rest.parse().map_err(|_| bad())?)),
            "vfio" => Ok(Self::Vfio(rest.into())),
            "vfio-cdev" => Ok(Self::VfioCdev(rest.parse().map_err(|_| bad())?)),
            "vfio-group" => {
                let (group, dir) = rest.split_once(":/sys/").ok_or_else(bad)?;
                Ok(Self::VfioGroup {
                    group: group.parse().map_err(|_| bad())?,
                    dir: format!("/sys/{dir}").into(),
                })
            }
            _ => Err(bad()),
        }
    }
}

impl DeviceSpec {
    /// The `--device` argument that parses back to this.
    pub fn arg(&self) -> String {
        match self {
            Self::Emulated(f) => format!("emulated:{f}"),
            Self::Vfio(p) => format!("vfio:{}", p.display()),
            Self::VfioCdev(f) => format!("vfio-cdev:{f}"),
            Self::VfioGroup { group, dir } => format!("vfio-group:{group}:{}", dir.display()),
        }
    }
}

/// The descriptor vgpud gave for a shared VFIO node, or its /dev path (a VMM run by hand).
fn given_or(given: &Option<FileArg>, path: &str) -> FileArg {
    given.clone().unwrap_or_else(|| path.into())
}

/// What to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// A built-in payload name or a raw image file (`fd:N` or a path; 32-bit protected mode,
    /// see `payload`).
    Payload(String),
    Kernel {
        kernel: FileArg,
        initrd: Option<FileArg>,
        cmdline: String,
    },
}

#[derive(Debug, Clone)]
pub struct VmmConfig {
    pub memory_mib: u32,
    pub vcpus: u8,
    /// In PCI slot order (00:01.0, 00:02.0, ...).
    pub devices: Vec<DeviceSpec>,
    pub boot: Boot,
    pub serial_log: Option<FileArg>,
    pub console: bool,
    /// /dev/kvm as vgpud opened it (the VMM opens it itself without).
    pub kvm: Option<FileArg>,
    /// /dev/iommu as vgpud opened it, for `DeviceSpec::VfioCdev` devices.
    pub iommufd: Option<FileArg>,
    /// /dev/vfio/vfio as vgpud opened it, for `DeviceSpec::VfioGroup` devices.
    pub vfio_container: Option<FileArg>,
    /// The VM's UUID (`-uuid`, as QEMU's command line carries it).
    pub uuid: Option<String>,
    /// Who the VMM becomes once its devices are open; `None` runs it as started.
    pub jail: Option<Jail>,
    /// The seccomp allow-list before the vCPUs start: `Some(None)` the whole list,
    /// `Some(Some(call))` without `call` (tests).
    pub seccomp: Option<Option<String>>,
}

impl VmmConfig {
    pub fn validate(&self) -> Result<(), VmmError> {
        if !(1..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(VmmError::InvalidArgument(format!(
                "memory must be 1..={MAX_MEMORY_MIB} MiB (below the PCI hole), not {}",
                self.memory_mib
            )));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(VmmError::InvalidArgument(format!(
                "vcpus must be 1..=64, not {}",
                self.vcpus
            )));
        }
        if self.devices.len() > bus::MAX_DEVICES {
            return Err(VmmError::InvalidArgument(format!(
                "a guest takes at most {} devices, not {}",
                bus::MAX_DEVICES,
                self.devices.len()
            )));
        }
        if self.jail.is_some() {
            self.descriptors_only()?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            if self.devices[..i].contains(d) {
                return Err(VmmError::InvalidArgument(format!(
                    "device {} is given twice",
                    d.arg()
                )));
            }
        }
        Ok(())
    }

    /// A jailed VMM takes its files as descriptors: it must not open what a caller names with
    /// the root it starts as, nor any /dev node.
    fn descriptors_only(&self) -> Result<(), VmmError> {
        let mut files: Vec<FileArg> = Vec::new();
        match &self.boot {
            Boot::Payload(name) if payload::builtin(name).is_none() => {
                files.push(name.as_str().into())
            }
            Boot::Payload(_) => {}
            Boot::Kernel { kernel, initrd, .. } => {
                files.push(kernel.clone());
                files.extend(initrd.clone());
            }
        }
        files.extend(self.serial_log.clone());
        files.extend(self.kvm.clone());
        files.extend(self.iommufd.clone());
        let groups = self
            .devices
            .iter()
            .any(|d| matches!(d, DeviceSpec::VfioGroup { .. }));
        match &self.vfio_container {
            Some(f) => files.push(f.clone()),
            None if groups => files.push("/dev/vfio/vfio".into()),
            None => {}
        }
        for d in &self.devices {
            match d {
                DeviceSpec::Emulated(f)
                | DeviceSpec::VfioCdev(f)
                | DeviceSpec::VfioGroup { group: f, .. } => files.push(f.clone()),
                DeviceSpec::Vfio(p) => files.push(FileArg::Path(p.clone())),
            }
        }
        match files.iter().find(|f| matches!(f, FileArg::Path(_))) {
            Some(f) => Err(VmmError::InvalidArgument(format!(
                "{f}: a jailed VMM takes files as descriptors (fd:N)"
            ))),
            None => Ok(()),
        }
    }

    /// The `vgpud-vmm` command line for this configuration, for a daemon that spawns it.
    pub fn command(&self, binary: &Path) -> Command {
        let mut cmd = Command::new(binary);
        cmd.arg("--memory-mib")
            .arg(self.memory_mib.to_string())
            .arg("--vcpus")
            .arg(self.vcpus.to_string());
        for d in &self.devices {
            cmd.arg("--device").arg(d.arg());
        }
        match &self.boot {
            Boot::Payload(p) => cmd.arg("--payload").arg(p),
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                cmd.arg("--kernel")
                    .arg(kernel.to_string())
                    .arg("--cmdline")
                    .arg(cmdline);
                if let Some(i) = initrd {
                    cmd.arg("--initrd").arg(i.to_string());
                }
                &mut cmd
            }
        };
        if let Some(log) = &self.serial_log {
            cmd.arg("--serial-log").arg(log.to_string());
        }
        if self.console {
            cmd.arg("--console");
        }
        if let Some(kvm) = &self.kvm {
            cmd.arg("--kvm").arg(kvm.to_string());
        }
        if let Some(container) = &self.vfio_container {
            cmd.arg("--vfio-container").arg(container.to_string());
        }
        if let Some(iommufd) = &self.iommufd {
            cmd.arg("--iommufd").arg(iommufd.to_string());
        }
        if let Some(uuid) = &self.uuid {
            cmd.arg("-uuid").arg(uuid);
        }
        if let Some(j) = &self.jail {
            cmd.arg("--jail-uid")
                .arg(j.uid.to_string())
                .arg("--jail-gid")
                .arg(j.gid.to_string());
        }
        match &self.seccomp {
            Some(None) => {
                cmd.arg("--seccomp");
            }
            Some(Some(without)) => {
                cmd.arg("--seccomp").arg("--seccomp-without").arg(without);
            }
            None => {}
        }
        cmd
    }
}

/// The process exit status for a guest exit: the payload's code, 0 for a final halt,
/// 143 (128 + SIGTERM) when stopped, 125 for a triple fault.
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
    fn device_specs_parse() {
        assert_eq!(
            "emulated:/tmp/t4.json".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Emulated("/tmp/t4.json".into())
        );
        assert_eq!(
            "vfio:/sys/bus/mdev/devices/u"
                .parse::<DeviceSpec>()
                .unwrap(),
            DeviceSpec::Vfio("/sys/bus/mdev/devices/u".into())
        );
        assert_eq!(
            "vfio-cdev:fd:9".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::VfioCdev(FileArg::Fd(9))
        );
        assert_eq!(DeviceSpec::VfioCdev(FileArg::Fd(9)).arg(), "vfio-cdev:fd:9");
        let group = "vfio-group:fd:8:/sys/bus/pci/devices/0000:41:00.4";
        let spec = DeviceSpec::VfioGroup {
            group: FileArg::Fd(8),
            dir: "/sys/bus/pci/devices/0000:41:00.4".into(),
        };
        assert_eq!(group.parse::<DeviceSpec>().unwrap(), spec);
        assert_eq!(spec.arg(), group);
        for bad in [
            "vfio-group:fd:8",
            "vfio-group:fd:x:/sys/bus/mdev/devices/u",
            "vfio-group::/sys/bus/mdev/devices/u",
            "",
            "emulated",
            "emulated:",
            "qemu:/x",
            "/tmp/t4.json",
            "vfio-cdev:fd:x",
        ] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    fn config() -> VmmConfig {
        VmmConfig {
            memory_mib: 64,
            vcpus: 1,
            devices: vec![DeviceSpec::Emulated("/tmp/d.json".into())],
            boot: Boot::Payload("pci-probe".into()),
            serial_log: Some("/tmp/s.log".into()),
            console: true,
            kvm: None,
            iommufd: None,
            vfio_container: None,
            uuid: None,
            jail: None,
            seccomp: None,
        }
    }

    #[test]
    fn a_jailed_vmm_takes_vfio_groups_and_their_container_by_descriptor() {
        let mut c = config();
        c.devices = vec![DeviceSpec::VfioGroup {
            group: FileArg::Fd(8),
            dir: "/sys/bus/mdev/devices/u".into(),
        }];
        (c.serial_log, c.kvm) = (Some(FileArg::Fd(6)), Some(FileArg::Fd(5)));
        c.jail = Some(Jail { uid: 1, gid: 1 });
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("/dev/vfio/vfio: a jailed VMM"), "{err}");
        c.vfio_container = Some(FileArg::Fd(7));
        assert!(c.validate().is_ok());
        c.devices = vec![DeviceSpec::Vfio("/sys/bus/mdev/devices/u".into())];
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("/sys/bus/mdev/devices/u: a jailed VMM"),
            "{err}"
        );
    }

    #[test]
    fn validation_bounds() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.memory_mib = 4096;
        assert!(c.validate().is_err());
        c = config();
        c.vcpus = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn command_builder_round_trips_flags() {
        let cmd = config().command(Path::new("/usr/bin/vgpud-vmm"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--memory-mib",
                "64",
                "--vcpus",
                "1",
                "--device",
                "emulated:/tmp/d.json",
                "--payload",
                "pci-probe",
                "--serial-log",
                "/tmp/s.log",
                "--console"
            ]
        );
    }

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

    #[test]
    fn too_many_or_repeated_devices_are_refused() {
        let mut c = config();
        c.devices = (0..5)
            .map(|i| DeviceSpec::Emulated(format!("/tmp/{i}.json").into()))
            .collect();
        assert!(c.validate().is_err());
        c.devices = vec![
            DeviceSpec::Emulated("/tmp/a.json".into()),
            DeviceSpec::Emulated("/tmp/a.json".into()),
        ];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
    }
}
