//! The contract between vgpud and `vgpud-vmm`: the VMM's command line (its devices, what it
//! boots, its files as inherited descriptors, its jail), checked by the same code on both sides
//! of the exec, and what kind of kernel image a file is. vgpud builds a launch with it and links
//! nothing of the hypervisor (KVM, VFIO, the payload assembler, seccomp): only the VMM does.

use std::fs::File;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use vgpud_model::guest::BUILTIN_PAYLOADS;

/// How many passthrough devices one guest takes (one INTx line each on the VMM's bus).
pub const MAX_DEVICES: usize = 4;
/// The most guest memory, in MiB: RAM stays below the 32-bit PCI hole.
pub const MAX_MEMORY_MIB: u32 = 3 * 1024;

/// A launch the VMM would refuse, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argument: {0}")]
pub struct InvalidLaunch(pub String);

/// A file the VMM reads or writes: a path (run by hand) or a descriptor it inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileArg {
    Path(PathBuf),
    Fd(RawFd),
}

impl std::str::FromStr for FileArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("fd:") {
            Some(n) => match n.parse::<RawFd>() {
                Ok(fd) if fd >= 0 => Ok(Self::Fd(fd)),
                _ => Err(format!("{s:?} is not fd:N with a descriptor number")),
            },
            None if s.is_empty() => Err("empty file name".into()),
            None => Ok(Self::Path(s.into())),
        }
    }
}

impl std::fmt::Display for FileArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Fd(n) => write!(f, "fd:{n}"),
        }
    }
}

impl From<&str> for FileArg {
    fn from(s: &str) -> Self {
        s.parse().unwrap_or_else(|_| Self::Path(s.into()))
    }
}

impl From<String> for FileArg {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<PathBuf> for FileArg {
    fn from(p: PathBuf) -> Self {
        Self::Path(p)
    }
}

impl FileArg {
    /// The file for reading (a path is opened; a descriptor is duplicated).
    pub fn open(&self) -> std::io::Result<File> {
        match self {
            Self::Path(p) => File::open(p),
            Self::Fd(n) => inherited(*n),
        }
    }

    /// The file for writing (a path is created or truncated; a descriptor is duplicated).
    pub fn create(&self) -> std::io::Result<File> {
        match self {
            Self::Path(p) => File::create(p),
            Self::Fd(n) => inherited(*n),
        }
    }

    /// The file itself for reading and writing: a path is opened, an inherited descriptor is
    /// taken over rather than copied (so the process holds only what it was given). Call it at
    /// most once per descriptor: the returned `File` closes it.
    pub fn adopt(&self) -> std::io::Result<File> {
        match self {
            Self::Path(p) => std::fs::OpenOptions::new().read(true).write(true).open(p),
            Self::Fd(n) => {
                // SAFETY: F_GETFD only reads the descriptor's flags; EBADF if it is not open.
                if unsafe { libc::fcntl(*n, libc::F_GETFD) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `n` is open and was inherited; nothing else in the process owns it
                // (the caller adopts each descriptor once), so the `File` may close it.
                Ok(unsafe { File::from_raw_fd(*n) })
            }
        }
    }

    /// How messages name it.
    pub fn name(&self) -> PathBuf {
        PathBuf::from(self.to_string())
    }
}

fn inherited(fd: RawFd) -> std::io::Result<File> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF if `fd` is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open (checked above) and is never closed by this process, which keeps
    // every descriptor it inherited for its whole life; the borrow ends with this function.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(File::from(borrowed.try_clone_to_owned()?))
}

/// Who the VMM becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
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
    type Err = InvalidLaunch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            InvalidLaunch(format!(
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
    pub fn validate(&self) -> Result<(), InvalidLaunch> {
        if !(1..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(InvalidLaunch(format!(
                "memory must be 1..={MAX_MEMORY_MIB} MiB (below the PCI hole), not {}",
                self.memory_mib
            )));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(InvalidLaunch(format!(
                "vcpus must be 1..=64, not {}",
                self.vcpus
            )));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(InvalidLaunch(format!(
                "a guest takes at most {} devices, not {}",
                MAX_DEVICES,
                self.devices.len()
            )));
        }
        if self.jail.is_some() {
            self.descriptors_only()?;
        }
        for (i, d) in self.devices.iter().enumerate() {
            if self.devices[..i].contains(d) {
                return Err(InvalidLaunch(format!("device {} is given twice", d.arg())));
            }
        }
        Ok(())
    }

    /// A jailed VMM takes its files as descriptors: it must not open what a caller names with
    /// the root it starts as, nor any /dev node.
    fn descriptors_only(&self) -> Result<(), InvalidLaunch> {
        let mut files: Vec<FileArg> = Vec::new();
        match &self.boot {
            Boot::Payload(name) if !BUILTIN_PAYLOADS.contains(&name.as_str()) => {
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
            Some(f) => Err(InvalidLaunch(format!(
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

/// The kind of kernel image, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Elf,
    BzImage,
}

/// ELF by its magic, bzImage by the "HdrS" magic at 0x202 of the setup header.
pub fn image_kind(head: &[u8]) -> Option<ImageKind> {
    if head.get(..4) == Some(&ELF_MAGIC[..]) {
        return Some(ImageKind::Elf);
    }
    let magic = head.get(0x202..0x206)?;
    (u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) == HDR_MAGIC)
        .then_some(ImageKind::BzImage)
}

/// The ELF magic.
pub const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// "HdrS": the magic of a bzImage's setup header (at 0x202).
pub const HDR_MAGIC: u32 = 0x5372_6448;

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
