//! vgpud-vmm: one KVM guest per process, with passthrough devices (emulated or VFIO).
//! Files are paths or inherited descriptors (`fd:N`); vgpud passes descriptors only.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{self as vmm, Boot, DeviceSpec, FileArg, Jail, VmmConfig};
use clap::Parser;

static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Parser, Debug)]
#[command(
    name = "vgpud-vmm",
    about = "Run one KVM guest with a vGPU attached (VFIO or emulated)"
)]
struct Args {
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mib: u32,
    /// Number of vCPUs (vCPU 0 runs the payload; the others wait for a SIPI).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// emulated:FILE.json or emulated:fd:N (a guest PCI description),
    /// vfio:/sys/bus/mdev/devices/UUID (group API, the VMM opens /dev/vfio paths),
    /// vfio-group:fd:N:/sys/... (the device's group as opened, with --vfio-container; the
    /// sysfs directory only names the device) or vfio-cdev:fd:N (a device cdev, iommufd);
    /// repeat for more devices (slots 00:01.0, 00:02.0, ...; at most 4).
    #[arg(long)]
    device: Vec<DeviceSpec>,
    /// Built-in payload (pci-probe, loop, halt) or a raw 32-bit image (FILE or fd:N) loaded and
    /// entered at 0x10000.
    #[arg(long, conflicts_with = "kernel")]
    payload: Option<String>,
    /// Linux kernel to boot (bzImage or ELF vmlinux, 64-bit entry): FILE or fd:N.
    #[arg(long)]
    kernel: Option<FileArg>,
    /// Initial ramdisk for --kernel, loaded high in guest RAM: FILE or fd:N.
    #[arg(long, requires = "kernel")]
    initrd: Option<FileArg>,
    /// Kernel command line for --kernel.
    #[arg(long, requires = "kernel", default_value = "console=ttyS0")]
    cmdline: String,
    /// File (or fd:N) that receives everything the guest writes to its UART.
    #[arg(long)]
    serial_log: Option<FileArg>,
    /// Also copy the guest's UART output to stdout.
    #[arg(long)]
    console: bool,
    /// A file (or fd:N) kept open for the life of the process, so the device shows as held
    /// (vgpud passes the simulated VFIO group node); repeatable.
    #[arg(long)]
    hold: Vec<FileArg>,
    /// /dev/kvm already opened (fd:N); without it the VMM opens /dev/kvm.
    #[arg(long)]
    kvm: Option<FileArg>,
    /// /dev/iommu already opened (fd:N), for vfio-cdev devices; without it the VMM opens it.
    #[arg(long)]
    iommufd: Option<FileArg>,
    /// /dev/vfio/vfio already opened (fd:N), for vfio-group devices; without it the VMM
    /// opens it.
    #[arg(long)]
    vfio_container: Option<FileArg>,
    /// The VM's UUID (given as `-uuid UUID`, as on QEMU's command line).
    #[arg(long)]
    uuid: Option<uuid::Uuid>,
    /// Once its devices are open, become this uid (with --jail-gid) in an empty mount
    /// namespace with no capabilities and no_new_privs (needs root to start).
    #[arg(long, requires = "jail_gid")]
    jail_uid: Option<u32>,
    #[arg(long, requires = "jail_uid")]
    jail_gid: Option<u32>,
    /// Run the guest under the seccomp allow-list (a call outside it kills the VMM).
    #[arg(long)]
    seccomp: bool,
    /// Leave this system call out of the allow-list (to test that the filter kills).
    #[arg(long, requires = "seccomp", hide = true)]
    seccomp_without: Option<String>,
}

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The `vgpud-vmm` program.
pub fn main() -> ExitCode {
    // QEMU spells it `-uuid`; clap's long options take two dashes.
    let args =
        Args::parse_from(std::env::args_os().map(
            |a| {
                if a == "-uuid" {
                    "--uuid".into()
                } else {
                    a
                }
            },
        ));
    let mut _held = Vec::new();
    for file in &args.hold {
        match file.open() {
            Ok(f) => _held.push(f),
            Err(e) => {
                eprintln!("vgpud-vmm: cannot open {file} (--hold): {e}");
                return ExitCode::from(1);
            }
        }
    }
    let boot = match (args.payload, args.kernel) {
        (Some(p), _) => Boot::Payload(p),
        (None, Some(kernel)) => Boot::Kernel {
            kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
        },
        (None, None) => {
            eprintln!("vgpud-vmm: one of --payload or --kernel is required");
            return ExitCode::from(2);
        }
    };
    let config = VmmConfig {
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        devices: args.device,
        boot,
        serial_log: args.serial_log,
        console: args.console,
        kvm: args.kvm,
        iommufd: args.iommufd,
        vfio_container: args.vfio_container,
        uuid: args.uuid.map(|u| u.to_string()),
        jail: args
            .jail_uid
            .zip(args.jail_gid)
            .map(|(uid, gid)| Jail { uid, gid }),
        seccomp: args.seccomp.then_some(args.seccomp_without),
    };
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_stop as *const () as libc::sighandler_t) };
    }
    match vmm::launch(&config, &STOP, &mut |line| println!("{line}")) {
        Ok(exit) => {
            println!("vgpud-vmm: guest ended: {exit:?}");
            ExitCode::from(vmm::exit_status(&exit) as u8)
        }
        Err(e) => {
            let mut msg = format!("vgpud-vmm: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}
