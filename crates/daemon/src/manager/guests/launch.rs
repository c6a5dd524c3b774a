//! Guests: one `vgpud-vmm` child process per guest. This module knows how to attach a device
//! (`DeviceSource`: VFIO on a real host, an emulated PCI function on the simulator) and how to
//! build and spawn the VMM's command line; the manager owns the guests' state. vgpud opens
//! what needs privilege (/dev/kvm, the serial log, the simulated group node) and hands the VMM
//! descriptors; kernel, initrd and payload image come as descriptors the caller opened.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manager::holders::{group_node, vfio_cdev};
use crate::manager::DeviceView;
use vgpud_launch::{Boot, DeviceSpec, FileArg, Jail, VmmConfig};
use vgpud_model::error::{Error, Result};
use vgpud_model::MdevUuid;

/// How the VMM gets a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    pub device: DeviceSpec,
    /// A file the VMM keeps open for its lifetime (`--hold`), so the device shows as held
    /// where the VMM does not open a real VFIO group itself.
    pub hold: Option<PathBuf>,
    /// The guest sees an emulated PCI function, not the real device.
    pub emulated: bool,
    /// The IOMMU context vgpud opens for the VMM: /dev/iommu for a device attached by its
    /// VFIO cdev, /dev/vfio/vfio (the container) for one attached by its group.
    pub iommu: Option<PathBuf>,
}

impl AttachSpec {
    /// How the device reaches the guest: "cdev" (VFIO cdev + iommufd), "group" (VFIO group
    /// API) or "emulated".
    pub fn api(&self) -> &'static str {
        match self.device {
            DeviceSpec::VfioCdev(_) => "cdev",
            DeviceSpec::Vfio(_) | DeviceSpec::VfioGroup { .. } => "group",
            DeviceSpec::Emulated(_) => "emulated",
        }
    }
}

pub trait DeviceSource: Send + Sync {
    fn attach_arg(&self, device: &DeviceView) -> Result<AttachSpec>;
}

/// A real host: the device goes to the VMM through its VFIO cdev and iommufd where the kernel
/// offers them (`<device>/vfio-dev/vfioN`, /dev/iommu; vgpud opens both), otherwise through the
/// group API (/dev/vfio/<group> and the container /dev/vfio/vfio; vgpud opens both too).
pub struct VfioSource {
    pub dev_root: PathBuf,
}

impl DeviceSource for VfioSource {
    fn attach_arg(&self, device: &DeviceView) -> Result<AttachSpec> {
        let live = device
            .live
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument(format!("{} is not started", device.uuid)))?;
        // The mdev's directory, or for an nvidia-vendor vGPU the VF itself (its sysfs path).
        Ok(vfio_attach(&live.sysfs_path, &self.dev_root))
    }
}

/// How a VFIO device at `sysfs_dir` is attached: by cdev when it has one and /dev/iommu exists.
pub fn vfio_attach(sysfs_dir: &Path, dev_root: &Path) -> AttachSpec {
    let iommu = dev_root.join("iommu");
    match vfio_cdev(sysfs_dir, dev_root) {
        Some(node) if iommu.exists() => AttachSpec {
            device: DeviceSpec::VfioCdev(FileArg::Path(node)),
            hold: None,
            emulated: false,
            iommu: Some(iommu),
        },
        _ => {
            let group = std::fs::read_link(sysfs_dir.join("iommu_group"))
                .ok()
                .and_then(|l| l.file_name()?.to_str()?.parse::<u32>().ok());
            AttachSpec {
                // Without a group the device cannot go through VFIO; the sysfs path makes the
                // VMM's argument check say so.
                device: match group {
                    Some(g) => DeviceSpec::VfioGroup {
                        group: FileArg::Path(group_node(dev_root, g)),
                        dir: sysfs_dir.to_path_buf(),
                    },
                    None => DeviceSpec::Vfio(sysfs_dir.to_path_buf()),
                },
                hold: None,
                emulated: false,
                iommu: group.map(|_| dev_root.join("vfio/vfio")),
            }
        }
    }
}

/// The simulated host: the simulator describes the PCI function a guest would see; the VMM
/// emulates it and holds the simulated group node open.
pub struct SimSource {
    pub control: PathBuf,
    pub dev_root: PathBuf,
    /// Where the device descriptions are written.
    pub dir: PathBuf,
}

impl DeviceSource for SimSource {
    fn attach_arg(&self, device: &DeviceView) -> Result<AttachSpec> {
        let live = device
            .live
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument(format!("{} is not started", device.uuid)))?;
        let failed = |what: &str, e: std::io::Error| Error::Failed(format!("{what}: {e}"));
        let mut client = vgpud_sim::control::Client::connect(&self.control)
            .map_err(|e| failed("cannot reach the simulator", e))?;
        let desc = client
            .ok(&vgpud_sim::control::Request::GuestPci {
                device: device.uuid.to_string(),
            })
            .map_err(|e| failed("the simulator has no guest PCI description", e))?;
        std::fs::create_dir_all(&self.dir).map_err(|e| failed("cannot create a directory", e))?;
        let file = self.dir.join(format!("{}.json", device.uuid));
        std::fs::write(&file, desc.to_string())
            .map_err(|e| failed("cannot write the device description", e))?;
        let hold = match live.iommu_group {
            Some(g) => {
                let node = group_node(&self.dev_root, g);
                if !node.exists() {
                    if let Some(dir) = node.parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| failed("cannot create the group directory", e))?;
                    }
                    std::fs::write(&node, b"")
                        .map_err(|e| failed("cannot create the group node", e))?;
                }
                Some(node)
            }
            None => None,
        };
        Ok(AttachSpec {
            device: DeviceSpec::Emulated(file.into()),
            hold,
            emulated: true,
            iommu: None,
        })
    }
}

/// What the manager needs to run guests.
#[derive(Clone)]
pub struct GuestConfig {
    pub vmm_binary: PathBuf,
    pub source: Arc<dyn DeviceSource>,
    /// Serial logs go to `<dir>/<id>.log`.
    pub dir: PathBuf,
    /// Opened by vgpud and passed to the VMM.
    pub kvm: PathBuf,
    /// A system call left out of the VMM's seccomp allow-list, from the daemon's environment
    /// (`VGPUD_VMM_SECCOMP_WITHOUT`): how a test proves that the filter kills.
    pub seccomp_without: Option<String>,
    /// How long an ended guest stays on the bus (`VGPUD_GUEST_RETENTION_SECS`, default 10 min).
    pub retention: std::time::Duration,
}

/// The environment variable behind `GuestConfig::seccomp_without`.
pub const SECCOMP_WITHOUT_ENV: &str = "VGPUD_VMM_SECCOMP_WITHOUT";
/// The environment variable behind `GuestConfig::retention`.
pub const RETENTION_ENV: &str = "VGPUD_GUEST_RETENTION_SECS";
const RETENTION: std::time::Duration = std::time::Duration::from_secs(600);

impl GuestConfig {
    pub fn new(vmm_binary: PathBuf, source: Arc<dyn DeviceSource>, dir: PathBuf) -> Self {
        Self {
            vmm_binary,
            source,
            dir,
            kvm: "/dev/kvm".into(),
            seccomp_without: std::env::var(SECCOMP_WITHOUT_ENV).ok(),
            retention: std::env::var(RETENTION_ENV)
                .ok()
                .and_then(|s| s.parse().ok())
                .map(std::time::Duration::from_secs)
                .unwrap_or(RETENTION),
        }
    }

    /// `vgpud-vmm` next to the running executable.
    pub fn default_binary() -> PathBuf {
        std::env::current_exe()
            .map(|p| p.with_file_name("vgpud-vmm"))
            .unwrap_or_else(|_| PathBuf::from("vgpud-vmm"))
    }
}

/// A file a caller opened with its own rights and passed as a descriptor (D-Bus type h);
/// vgpud never opens a path a caller names.
#[derive(Clone)]
pub struct CallerFile(pub Arc<OwnedFd>);

impl CallerFile {
    pub fn new(fd: OwnedFd) -> Self {
        Self(Arc::new(fd))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Refuses what is not a regular file open for reading (a pipe or a device would let a
    /// caller feed the VMM without end).
    pub fn check(&self, what: &str) -> Result<()> {
        let bad = |why: &str| Error::InvalidArgument(format!("{what}: {why}"));
        let stat = nix::sys::stat::fstat(self.raw()).map_err(|e| bad(&e.to_string()))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(bad("not a regular file"));
        }
        let flags = nix::fcntl::fcntl(self.raw(), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| bad(&e.to_string()))?;
        if flags & libc::O_ACCMODE == libc::O_WRONLY {
            return Err(bad("not open for reading"));
        }
        Ok(())
    }
}

impl std::fmt::Debug for CallerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fd {}", self.raw())
    }
}

impl PartialEq for CallerFile {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CallerFile {}

/// LaunchGuest's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// A built-in payload.
    pub payload: Option<String>,
    /// A raw payload image.
    pub payload_file: Option<CallerFile>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u8>,
    pub kernel: Option<CallerFile>,
    pub initrd: Option<CallerFile>,
    pub cmdline: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestState {
    Running,
    Exited,
    Crashed,
}

impl GuestState {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Running => "running",
            GuestState::Exited => "exited",
            GuestState::Crashed => "crashed",
        }
    }
}

/// A guest as vgpud presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestView {
    pub id: u64,
    pub state: GuestState,
    pub pid: u32,
    pub devices: Vec<MdevUuid>,
    pub serial_log: PathBuf,
    /// The exit code; 128 + signal for a VMM killed by a signal; -1 while running.
    pub exit_status: i32,
    pub emulated: bool,
    pub owner_uid: Option<u32>,
    /// The VM's UUID, on the VMM's command line as `-uuid`.
    pub uuid: uuid::Uuid,
    /// How its devices reach it: "cdev", "group" or "emulated" (`AttachSpec::api`).
    pub vfio_api: String,
}

/// The VMM's configuration for one guest with `specs` in slot order; files by descriptor.
pub fn vmm_config(opts: &LaunchOptions, specs: &[AttachSpec]) -> VmmConfig {
    let boot = match (&opts.kernel, &opts.payload_file) {
        (Some(kernel), _) => Boot::Kernel {
            kernel: FileArg::Fd(kernel.raw()),
            initrd: opts.initrd.as_ref().map(|f| FileArg::Fd(f.raw())),
            cmdline: opts
                .cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0".into()),
        },
        (None, Some(image)) => Boot::Payload(FileArg::Fd(image.raw()).to_string()),
        (None, None) => Boot::Payload(opts.payload.clone().unwrap_or_else(|| "pci-probe".into())),
    };
    VmmConfig {
        memory_mib: opts.memory_mib.unwrap_or(64),
        vcpus: opts.vcpus.unwrap_or(1),
        devices: specs.iter().map(|s| s.device.clone()).collect(),
        boot,
        serial_log: None,
        console: false,
        kvm: None,
        iommufd: None,
        vfio_container: None,
        uuid: None,
        jail: None,
        seccomp: Some(None),
    }
}

/// Who runs a caller's VMM: the caller's own uid (and primary group), or for root and vgpud's
/// own launches the dedicated user `vgpud-vmm` where it exists, else `nobody`.
pub fn jail_for(caller_uid: Option<u32>) -> Result<Jail> {
    use nix::unistd::{Uid, User};
    if let Some(uid) = caller_uid.filter(|u| *u != 0) {
        let gid = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.gid.as_raw())
            .filter(|g| *g != 0)
            .unwrap_or(NOBODY);
        return Ok(Jail { uid, gid });
    }
    for name in [VMM_USER, "nobody"] {
        if let Ok(Some(u)) = User::from_name(name) {
            if u.uid.as_raw() != 0 && u.gid.as_raw() != 0 {
                return Ok(Jail {
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                });
            }
        }
    }
    Ok(Jail {
        uid: NOBODY,
        gid: NOBODY,
    })
}

/// The dedicated user for VMMs of root and of vgpud itself.
pub const VMM_USER: &str = "vgpud-vmm";
const NOBODY: u32 = 65534;
/// What the VMM may lock for DMA mapping beyond guest RAM, and what it may allocate beyond
/// guest RAM for itself (vCPU threads, an emulated device's memory BAR).
const MEMLOCK_EXTRA: u64 = 64 << 20;
const DATA_EXTRA: u64 = 1 << 30;
const NOFILE: u64 = 256;

/// A file that is no kernel is the caller's mistake: say so in the reply instead of in the
/// VMM's log after a guest that exits 1. Read with pread, so the caller's offset stays.
fn check_kernel_head(kernel: &CallerFile) -> Result<()> {
    let mut head = [0u8; 0x210];
    let n = nix::sys::uio::pread(&*kernel.0, &mut head, 0)
        .map_err(|e| Error::InvalidArgument(format!("kernel: {e}")))?;
    if vgpud_launch::image_kind(&head[..n]).is_none() {
        return Err(Error::InvalidArgument(
            "kernel: not a Linux kernel (neither a bzImage nor an ELF vmlinux)".into(),
        ));
    }
    Ok(())
}

fn open_rw(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// What one guest is launched with.
pub struct Launch<'a> {
    pub id: u64,
    pub uuid: uuid::Uuid,
    pub opts: &'a LaunchOptions,
    pub specs: &'a [AttachSpec],
    pub jail: Jail,
    /// Who may read the serial log besides root (the launching user).
    pub log_owner: Option<u32>,
}

/// Spawns the VMM; its output goes to `<dir>/<id>.vmm.log`, the guest's console to
/// `<dir>/<id>.log`.
pub fn spawn(config: &GuestConfig, l: &Launch<'_>) -> Result<(tokio::process::Child, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e: std::io::Error| Error::Failed(format!("{what}: {e}"));
    let opts = l.opts;
    for (what, file) in [
        ("kernel", &opts.kernel),
        ("initrd", &opts.initrd),
        ("payload_file", &opts.payload_file),
    ] {
        if let Some(f) = file {
            f.check(what)?;
        }
    }
    if let Some(kernel) = &opts.kernel {
        check_kernel_head(kernel)?;
    }
    let mut vmm = vmm_config(opts, l.specs);
    vmm.validate()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| io("cannot create the guests directory", e))?;
    // Descriptors vgpud opened for the VMM; dropped (closed here) once it is started.
    let mut opened: Vec<OwnedFd> = Vec::new();
    let kvm = open_rw(&config.kvm)
        .map_err(|e| io(&format!("cannot open {}", config.kvm.display()), e))?;
    vmm.kvm = Some(FileArg::Fd(kvm.as_raw_fd()));
    opened.push(kvm.into());
    let serial_log = config.dir.join(format!("{}.log", l.id));
    let _ = std::fs::remove_file(&serial_log);
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&serial_log)
        .map_err(|e| io("cannot create the serial log", e))?;
    if let Some(uid) = l.log_owner {
        std::os::unix::fs::fchown(&log, Some(uid), None)
            .map_err(|e| io("cannot hand the serial log to its user", e))?;
    }
    vmm.serial_log = Some(FileArg::Fd(log.as_raw_fd()));
    opened.push(log.into());
    let mut groups: Vec<(PathBuf, RawFd)> = Vec::new();
    for dev in &mut vmm.devices {
        match dev {
            DeviceSpec::Emulated(FileArg::Path(p)) => {
                let f = std::fs::File::open(&*p)
                    .map_err(|e| io("cannot open the device description", e))?;
                *dev = DeviceSpec::Emulated(FileArg::Fd(f.as_raw_fd()));
                opened.push(f.into());
            }
            DeviceSpec::VfioCdev(FileArg::Path(p)) => {
                let f = open_rw(p).map_err(|e| io("cannot open the VFIO device cdev", e))?;
                *dev = DeviceSpec::VfioCdev(FileArg::Fd(f.as_raw_fd()));
                opened.push(f.into());
            }
            DeviceSpec::VfioGroup { group, .. } => {
                if let FileArg::Path(p) = group {
                    // A group opens once: a second device of it shares the descriptor.
                    let fd = match groups.iter().find(|(q, _)| q == p) {
                        Some((_, fd)) => *fd,
                        None => {
                            let f = open_rw(p).map_err(|e| io("cannot open the VFIO group", e))?;
                            groups.push((p.clone(), f.as_raw_fd()));
                            let fd = f.as_raw_fd();
                            opened.push(f.into());
                            fd
                        }
                    };
                    *group = FileArg::Fd(fd);
                }
            }
            _ => {}
        }
    }
    if let Some(spec) = l.specs.iter().find(|s| s.iommu.is_some()) {
        let path = spec.iommu.as_deref().unwrap_or(Path::new("/dev/iommu"));
        let f = open_rw(path).map_err(|e| io(&format!("cannot open {}", path.display()), e))?;
        let fd = Some(FileArg::Fd(f.as_raw_fd()));
        match spec.api() {
            "cdev" => vmm.iommufd = fd,
            _ => vmm.vfio_container = fd,
        }
        opened.push(f.into());
    }
    vmm.uuid = Some(l.uuid.to_string());
    vmm.jail = Some(l.jail);
    vmm.seccomp = Some(config.seccomp_without.clone());
    let mut cmd = vmm.command(&config.vmm_binary);
    for hold in l.specs.iter().filter_map(|s| s.hold.as_ref()) {
        let f = std::fs::File::open(hold).map_err(|e| io("cannot open the group node", e))?;
        cmd.arg("--hold")
            .arg(FileArg::Fd(f.as_raw_fd()).to_string());
        opened.push(f.into());
    }
    let mut inherit: Vec<RawFd> = opened.iter().map(|f| f.as_raw_fd()).collect();
    inherit.extend(
        [&opts.kernel, &opts.initrd, &opts.payload_file]
            .into_iter()
            .flatten()
            .map(CallerFile::raw),
    );
    let out = std::fs::File::create(config.dir.join(format!("{}.vmm.log", l.id)))
        .map_err(|e| io("cannot create the VMM log", e))?;
    let err = out
        .try_clone()
        .map_err(|e| io("cannot create the VMM log", e))?;
    let memory = u64::from(vmm.memory_mib) << 20;
    let limits = [
        (libc::RLIMIT_MEMLOCK, memory + MEMLOCK_EXTRA),
        (libc::RLIMIT_DATA, memory + DATA_EXTRA),
        (libc::RLIMIT_NOFILE, NOFILE),
        (libc::RLIMIT_CORE, 0),
    ];
    cmd.env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (fcntl, getrlimit, setrlimit) on values captured by copy.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            for fd in &inherit {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (resource, value) in limits {
                // Raising a hard limit needs CAP_SYS_RESOURCE; without it the VMM gets the
                // daemon's hard limit (a container's memlock, say) and DMA mapping may fail.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(resource, &mut lim) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut want = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &want) < 0 {
                    want.rlim_cur = value.min(lim.rlim_max);
                    want.rlim_max = want.rlim_cur;
                    if libc::setrlimit(resource, &want) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| io(&format!("cannot start {}", config.vmm_binary.display()), e))?;
    drop(opened);
    Ok((child, serial_log))
}

/// The status a finished VMM reports: its exit code, or 128 + the signal that killed it.
pub fn status_of(status: &std::process::ExitStatus) -> (GuestState, i32) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (GuestState::Exited, c),
        (None, Some(s)) => (GuestState::Crashed, 128 + s),
        (None, None) => (GuestState::Crashed, -1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn statuses() {
        let s = std::process::ExitStatus::from_raw(0);
        assert_eq!(status_of(&s), (GuestState::Exited, 0));
        let s = std::process::ExitStatus::from_raw(143 << 8);
        assert_eq!(status_of(&s), (GuestState::Exited, 143));
        let s = std::process::ExitStatus::from_raw(9);
        assert_eq!(status_of(&s), (GuestState::Crashed, 137));
        let s = std::process::ExitStatus::from_raw(libc::SIGSYS);
        assert_eq!(status_of(&s), (GuestState::Crashed, 128 + libc::SIGSYS));
    }

    fn emulated() -> AttachSpec {
        AttachSpec {
            device: DeviceSpec::Emulated("/tmp/d.json".into()),
            hold: None,
            emulated: true,
            iommu: None,
        }
    }

    fn caller_file(bytes: &[u8]) -> CallerFile {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        CallerFile::new(f.into())
    }

    #[test]
    fn kernel_descriptors_reach_the_vmm_command_line() {
        let (kernel, initrd) = (caller_file(b"k"), caller_file(b"i"));
        let opts = LaunchOptions {
            kernel: Some(kernel.clone()),
            initrd: Some(initrd.clone()),
            cmdline: Some("console=ttyS0 quiet".into()),
            memory_mib: Some(512),
            ..Default::default()
        };
        let c = vmm_config(&opts, &[emulated()]);
        let args: Vec<String> = c
            .command(Path::new("vgpud-vmm"))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        let expected = format!(
            "--kernel fd:{} --cmdline console=ttyS0 quiet --initrd fd:{}",
            kernel.raw(),
            initrd.raw()
        );
        assert!(joined.contains(&expected), "{joined}");
        assert!(joined.contains("--seccomp"), "{joined}");
        let no_cmdline = LaunchOptions {
            kernel: Some(kernel),
            ..Default::default()
        };
        let c = vmm_config(&no_cmdline, &[emulated()]);
        assert!(matches!(c.boot, Boot::Kernel { ref cmdline, .. } if cmdline == "console=ttyS0"));
    }

    #[test]
    fn a_payload_image_goes_by_descriptor() {
        let image = caller_file(b"\xf4");
        let opts = LaunchOptions {
            payload_file: Some(image.clone()),
            ..Default::default()
        };
        let c = vmm_config(&opts, &[emulated()]);
        assert_eq!(c.boot, Boot::Payload(format!("fd:{}", image.raw())));
    }

    #[test]
    fn a_file_that_is_no_kernel_is_an_invalid_argument() {
        let err = check_kernel_head(&caller_file(b"root:x:0:0")).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("not a Linux kernel")),
            "{err:?}"
        );
        let elf = vgpud_vmm::payload::long_mode_elf().unwrap();
        check_kernel_head(&caller_file(&elf)).unwrap();
    }

    #[test]
    fn only_regular_readable_files_are_taken() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let err = CallerFile::new(r).check("kernel").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m == "kernel: not a regular file"),
            "{err:?}"
        );
        drop(w);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, b"x").unwrap();
        let write_only = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let err = CallerFile::new(write_only.into())
            .check("kernel")
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m == "kernel: not open for reading"),
            "{err:?}"
        );
        assert!(caller_file(b"x").check("kernel").is_ok());
    }

    #[test]
    fn root_and_internal_launches_get_an_unprivileged_user() {
        let j = jail_for(Some(0)).unwrap();
        assert_ne!(j.uid, 0);
        assert_ne!(j.gid, 0);
        assert_eq!(jail_for(None).unwrap(), j);
        // uid 1 is "daemon" (group 1) on every Debian.
        assert_eq!(jail_for(Some(1)).unwrap(), Jail { uid: 1, gid: 1 });
    }

    #[test]
    fn default_payload_is_pci_probe() {
        let c = vmm_config(&LaunchOptions::default(), &[emulated()]);
        assert_eq!(c.boot, Boot::Payload("pci-probe".into()));
        assert_eq!(c.memory_mib, 64);
    }

    #[test]
    fn several_devices_keep_their_order() {
        let spec = |p: &str| AttachSpec {
            device: DeviceSpec::Vfio(p.into()),
            hold: None,
            emulated: false,
            iommu: None,
        };
        let specs = [
            spec("/sys/bus/mdev/devices/b"),
            spec("/sys/bus/mdev/devices/a"),
        ];
        let c = vmm_config(&LaunchOptions::default(), &specs);
        assert_eq!(
            c.devices,
            [
                DeviceSpec::Vfio("/sys/bus/mdev/devices/b".into()),
                DeviceSpec::Vfio("/sys/bus/mdev/devices/a".into())
            ]
        );
    }

    #[test]
    fn a_device_with_a_vfio_cdev_goes_by_cdev_and_iommufd() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys/u"), dir.path().join("dev"));
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::create_dir_all(dev.join("vfio/devices")).unwrap();
        // No vfio-dev directory (Debian's 6.1, no IOMMUFD): the group API, group and container
        // opened by vgpud; without an IOMMU group, the sysfs path the VMM refuses in its jail.
        let spec = vfio_attach(&sys, &dev);
        assert_eq!(spec.device, DeviceSpec::Vfio(sys.clone()));
        assert_eq!((spec.api(), spec.iommu), ("group", None));
        std::os::unix::fs::symlink("../../kernel/iommu_groups/7", sys.join("iommu_group")).unwrap();
        let spec = vfio_attach(&sys, &dev);
        let group = FileArg::Path(dev.join("vfio/7"));
        let want = DeviceSpec::VfioGroup {
            group,
            dir: sys.clone(),
        };
        assert_eq!(spec.device, want);
        assert_eq!(
            (spec.api(), spec.iommu),
            ("group", Some(dev.join("vfio/vfio")))
        );
        // A cdev in sysfs and /dev, but no /dev/iommu: still the group API.
        std::fs::create_dir_all(sys.join("vfio-dev/vfio3")).unwrap();
        std::fs::write(dev.join("vfio/devices/vfio3"), b"").unwrap();
        assert_eq!(vfio_attach(&sys, &dev).api(), "group");
        std::fs::write(dev.join("iommu"), b"").unwrap();
        let spec = vfio_attach(&sys, &dev);
        assert_eq!(
            spec.device,
            DeviceSpec::VfioCdev(FileArg::Path(dev.join("vfio/devices/vfio3")))
        );
        assert_eq!(spec.iommu, Some(dev.join("iommu")));
        assert_eq!(spec.api(), "cdev");
    }

    #[test]
    fn a_cdev_name_that_is_not_vfio_n_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys/u"), dir.path().join("dev"));
        std::fs::create_dir_all(sys.join("vfio-dev/vfiox")).unwrap();
        std::fs::create_dir_all(dev.join("vfio/devices/vfiox")).unwrap();
        assert_eq!(vfio_cdev(&sys, &dev), None);
        std::fs::create_dir_all(sys.join("vfio-dev/vfio0")).unwrap();
        assert_eq!(vfio_cdev(&sys, &dev), None, "no node in /dev");
        std::fs::write(dev.join("vfio/devices/vfio0"), b"").unwrap();
        assert_eq!(vfio_cdev(&sys, &dev), Some(dev.join("vfio/devices/vfio0")));
    }
}
