//! Guests: one `vgpud-vmm` child process per guest. This module knows how to attach a device
//! (`DeviceSource`: VFIO on a real host, an emulated PCI function on the simulator) and how to
//! build and spawn the VMM's command line; the manager owns the guests' state.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::holders::group_node;
use crate::manager::DeviceView;
use crate::model::MdevUuid;
use crate::vmm::{Boot, DeviceSpec, VmmConfig};

/// How the VMM gets a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachSpec {
    pub device: DeviceSpec,
    /// A file the VMM keeps open for its lifetime (`--hold`), so the device shows as held
    /// where the VMM does not open a real VFIO group itself.
    pub hold: Option<PathBuf>,
    /// The guest sees an emulated PCI function, not the real device.
    pub emulated: bool,
}

pub trait DeviceSource: Send + Sync {
    fn attach_arg(&self, device: &DeviceView) -> Result<AttachSpec>;
}

/// A real host: the VMM opens the device through VFIO by its sysfs path (the mdev, or the VF
/// of an nvidia-vendor device); the VFIO group it opens makes it a holder.
pub struct VfioSource;

impl DeviceSource for VfioSource {
    fn attach_arg(&self, device: &DeviceView) -> Result<AttachSpec> {
        let live = device
            .live
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument(format!("{} is not started", device.uuid)))?;
        // The mdev's directory, or for an nvidia-vendor vGPU the VF itself (its sysfs path).
        let path = live.sysfs_path.clone();
        Ok(AttachSpec {
            device: DeviceSpec::Vfio(path),
            hold: None,
            emulated: false,
        })
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
        let mut client = crate::sim::control::Client::connect(&self.control)
            .map_err(|e| failed("cannot reach the simulator", e))?;
        let desc = client
            .ok(&crate::sim::control::Request::GuestPci {
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
            device: DeviceSpec::Emulated(file),
            hold,
            emulated: true,
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
}

impl GuestConfig {
    /// `vgpud-vmm` next to the running executable.
    pub fn default_binary() -> PathBuf {
        std::env::current_exe()
            .map(|p| p.with_file_name("vgpud-vmm"))
            .unwrap_or_else(|_| PathBuf::from("vgpud-vmm"))
    }
}

/// LaunchGuest's options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    pub payload: Option<String>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u8>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
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
}

/// The VMM's configuration for one guest with `specs` in slot order.
pub fn vmm_config(opts: &LaunchOptions, specs: &[AttachSpec], serial_log: &Path) -> VmmConfig {
    let boot = match &opts.kernel {
        Some(kernel) => Boot::Kernel {
            kernel: kernel.clone(),
            initrd: opts.initrd.clone(),
            cmdline: opts
                .cmdline
                .clone()
                .unwrap_or_else(|| "console=ttyS0".into()),
        },
        None => Boot::Payload(opts.payload.clone().unwrap_or_else(|| "pci-probe".into())),
    };
    VmmConfig {
        memory_mib: opts.memory_mib.unwrap_or(64),
        vcpus: opts.vcpus.unwrap_or(1),
        devices: specs.iter().map(|s| s.device.clone()).collect(),
        boot,
        serial_log: Some(serial_log.to_path_buf()),
        console: false,
    }
}

/// A kernel or initrd the VMM could not read is the caller's mistake: say so in the reply
/// instead of in the VMM's log after a guest that exits 1.
fn check_kernel_files(boot: &Boot) -> Result<()> {
    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = boot
    {
        crate::vmm::linux::LinuxFiles::open(kernel, initrd.as_deref(), cmdline).map_err(|e| {
            let source = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            Error::InvalidArgument(format!("{e}{source}"))
        })?;
    }
    Ok(())
}

/// Spawns the VMM for guest `id` with `specs` in slot order; its output goes to
/// `<dir>/<id>.vmm.log`.
pub fn spawn(
    config: &GuestConfig,
    id: u64,
    opts: &LaunchOptions,
    specs: &[AttachSpec],
) -> Result<(tokio::process::Child, PathBuf)> {
    let io = |what: &str, e: std::io::Error| Error::Failed(format!("{what}: {e}"));
    std::fs::create_dir_all(&config.dir)
        .map_err(|e| io("cannot create the guests directory", e))?;
    let serial_log = config.dir.join(format!("{id}.log"));
    let vmm = vmm_config(opts, specs, &serial_log);
    vmm.validate()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    check_kernel_files(&vmm.boot)?;
    let mut cmd = vmm.command(&config.vmm_binary);
    for hold in specs.iter().filter_map(|s| s.hold.as_ref()) {
        cmd.arg("--hold").arg(hold);
    }
    let out = std::fs::File::create(config.dir.join(format!("{id}.vmm.log")))
        .map_err(|e| io("cannot create the VMM log", e))?;
    let err = out
        .try_clone()
        .map_err(|e| io("cannot create the VMM log", e))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| io(&format!("cannot start {}", config.vmm_binary.display()), e))?;
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
    }

    #[test]
    fn kernel_options_reach_the_vmm_command_line() {
        let spec = AttachSpec {
            device: DeviceSpec::Emulated("/tmp/d.json".into()),
            hold: None,
            emulated: true,
        };
        let opts = LaunchOptions {
            kernel: Some("/boot/vmlinuz".into()),
            initrd: Some("/boot/initrd.img".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            memory_mib: Some(512),
            ..Default::default()
        };
        let c = vmm_config(&opts, std::slice::from_ref(&spec), Path::new("/tmp/1.log"));
        assert_eq!(
            c.boot,
            Boot::Kernel {
                kernel: "/boot/vmlinuz".into(),
                initrd: Some("/boot/initrd.img".into()),
                cmdline: "console=ttyS0 quiet".into(),
            }
        );
        let args: Vec<String> = c
            .command(Path::new("vgpud-vmm"))
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains(
                "--kernel /boot/vmlinuz --cmdline console=ttyS0 quiet --initrd /boot/initrd.img"
            ),
            "{joined}"
        );
        let no_cmdline = LaunchOptions {
            kernel: Some("/boot/vmlinuz".into()),
            ..Default::default()
        };
        let c = vmm_config(
            &no_cmdline,
            std::slice::from_ref(&spec),
            Path::new("/tmp/1.log"),
        );
        assert!(matches!(c.boot, Boot::Kernel { ref cmdline, .. } if cmdline == "console=ttyS0"));
    }

    #[test]
    fn unreadable_kernel_is_an_invalid_argument() {
        let boot = Boot::Kernel {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
        };
        let err = check_kernel_files(&boot).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("cannot read kernel /nonexistent/vmlinuz: No such file")),
            "{err:?}"
        );
        assert!(check_kernel_files(&Boot::Payload("halt".into())).is_ok());
    }

    #[test]
    fn default_payload_is_pci_probe() {
        let spec = AttachSpec {
            device: DeviceSpec::Emulated("/tmp/d.json".into()),
            hold: None,
            emulated: true,
        };
        let c = vmm_config(
            &LaunchOptions::default(),
            std::slice::from_ref(&spec),
            Path::new("/tmp/1.log"),
        );
        assert_eq!(c.boot, Boot::Payload("pci-probe".into()));
        assert_eq!(c.memory_mib, 64);
    }

    #[test]
    fn several_devices_keep_their_order() {
        let spec = |p: &str| AttachSpec {
            device: DeviceSpec::Vfio(p.into()),
            hold: None,
            emulated: false,
        };
        let specs = [
            spec("/sys/bus/mdev/devices/b"),
            spec("/sys/bus/mdev/devices/a"),
        ];
        let c = vmm_config(&LaunchOptions::default(), &specs, Path::new("/tmp/1.log"));
        assert_eq!(
            c.devices,
            [
                DeviceSpec::Vfio("/sys/bus/mdev/devices/b".into()),
                DeviceSpec::Vfio("/sys/bus/mdev/devices/a".into())
            ]
        );
    }
}
