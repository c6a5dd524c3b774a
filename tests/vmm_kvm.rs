//! vgpud-vmm on the real /dev/kvm: the pci-probe payload against emulated vGPU descriptions
//! taken from the simulator's profiles, and SIGTERM on a guest that never ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vgpud_sim::profile;

/// Every machine of this kind has /dev/kvm (DESIGN.md, testing tier 3): a missing one fails
/// the test that needs it instead of letting it pass unchecked.
fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm does not exist: these tests run guests on KVM (load kvm, or give the test \
         access to the device)"
    );
}

/// Writes the `[device.guest]` of a built-in profile as the JSON `--device emulated:` takes.
fn description(dir: &Path, profile_name: &str) -> PathBuf {
    let templates = profile::builtin(profile_name).expect("built-in profile");
    let guest = &templates[0].guest;
    let path = dir.join(format!("{profile_name}.json"));
    std::fs::write(&path, serde_json::to_vec(guest).unwrap()).unwrap();
    path
}

fn run_probe(profile_name: &str) -> (Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let desc = description(dir.path(), profile_name);
    let log = dir.path().join("serial.log");
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args([
            "--memory-mib",
            "64",
            "--vcpus",
            "1",
            "--payload",
            "pci-probe",
        ])
        .arg("--device")
        .arg(format!("emulated:{}", desc.display()))
        .arg("--serial-log")
        .arg(&log)
        .output()
        .unwrap();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    (out, serial)
}

/// `fd:N` for a file the VMM inherits (FD_CLOEXEC cleared), as vgpud passes files.
fn inheritable(f: &std::fs::File) -> String {
    use std::os::fd::AsRawFd;
    nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    format!("fd:{}", f.as_raw_fd())
}

/// The jail vgpud puts the VMM in: /dev/kvm by descriptor, nobody's uid, the seccomp filter.
fn jailed(cmd: &mut Command, kvm: &std::fs::File) {
    cmd.arg("--kvm").arg(inheritable(kvm)).args([
        "--jail-uid",
        "65534",
        "--jail-gid",
        "65534",
        "--seccomp",
    ]);
}

fn open_kvm() -> std::fs::File {
    require_kvm();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .unwrap_or_else(|e| panic!("/dev/kvm cannot be opened: {e}"))
}

fn assert_line(serial: &str, line: &str) {
    assert!(
        serial.lines().any(|l| l.trim_end() == line),
        "serial log lacks {line:?}:\n{serial}"
    );
}

#[test]
fn pci_probe_finds_emulated_t4_and_gets_its_interrupt() {
    require_kvm();
    let (out, serial) = run_probe("nvidia-t4");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("emulated (no VFIO)"), "{stdout}");
    assert_line(
        &serial,
        "vgpud-vmm: device: 00:01.0 10de:1eb8 emulated (no VFIO)",
    );
    assert_line(&serial, "00:00.0 8086:1237 class 060000");
    assert_line(&serial, "00:01.0 10de:1eb8 class 030200");
    // Sizes as in nvidia-t4.toml: 16 MiB, 256 MiB (64-bit, prefetchable), 32 MiB (64-bit, prefetchable).
    assert_line(&serial, "  bar0 mem32 addr=d2000000 size=01000000");
    assert_line(&serial, "  bar1 mem64 prefetch addr=c0000000 size=10000000");
    assert_line(&serial, "  bar3 mem64 prefetch addr=d0000000 size=02000000");
    // The vendor capability tells the probe this is vgpud's register block.
    assert_line(&serial, "kind: vgpud emulated device (registers in bar0)");
    assert_line(&serial, "bar0 moved to e0000000");
    assert_line(&serial, "scratch wrote 5aa5c33c read 5aa5c33c ok");
    assert_line(&serial, "irq count=1");
    assert_line(&serial, "irq again count=1");
    // MSI: programmed by the guest, routed by KVM_SET_GSI_ROUTING, delivered through an irqfd
    // with both 8259s masked and a vector no 8259 uses.
    assert_line(&serial, "msi cap at 50");
    assert_line(&serial, "msi enabled vector=40");
    assert_line(&serial, "msi count=1");
    // MSI-X: vector 0 programmed through the table in BAR0 (trapped MMIO), routed the same way.
    assert_line(&serial, "msix cap at 60 table bar0+800 vector=41");
    assert_line(&serial, "msix count=1");
    // The last prefetchable BAR is host memory behind a KVM memory slot: the guest's write
    // reaches the host's memory, the slot follows the BAR's move with the content, and no
    // access traps to the VMM.
    assert_line(
        &serial,
        "ram bar3 at d0000000 wrote 1234abcd host saw 1234abcd ok",
    );
    assert_line(&serial, "ram bar moved to e2000000 read 1234abcd ok");
    assert_line(&serial, "ram traps=0");
    assert_line(&serial, "pci-probe: done");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pci_probe_passes_inside_the_jail() {
    let dir = tempfile::tempdir().unwrap();
    let desc = std::fs::File::open(description(dir.path(), "nvidia-t4")).unwrap();
    let log_path = dir.path().join("serial.log");
    let (log, kvm) = (std::fs::File::create(&log_path).unwrap(), open_kvm());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.args([
        "--payload",
        "pci-probe",
        "-uuid",
        "6c1d0000-0000-4000-8000-00000000a1a1",
    ])
    .arg("--device")
    .arg(format!("emulated:{}", inheritable(&desc)))
    .arg("--serial-log")
    .arg(inheritable(&log));
    jailed(&mut cmd, &kvm);
    let out = cmd.output().unwrap();
    let serial = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{serial}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_line(&serial, "scratch wrote 5aa5c33c read 5aa5c33c ok");
    assert_line(&serial, "msi count=1");
    assert_line(&serial, "msix count=1");
    assert_line(&serial, "pci-probe: done");
}

#[test]
fn a_jailed_vmm_opens_no_path() {
    // It starts as root: a file named by path would be opened with root's rights.
    let dir = tempfile::tempdir().unwrap();
    let desc = description(dir.path(), "nvidia-t4");
    let kvm = open_kvm();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.args(["--payload", "pci-probe"])
        .arg("--device")
        .arg(format!("emulated:{}", desc.display()))
        .arg("--serial-log")
        .arg(dir.path().join("serial.log"));
    jailed(&mut cmd, &kvm);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a jailed VMM takes files as descriptors (fd:N)"),
        "{stderr}"
    );
}

#[test]
fn pci_probe_handles_mtty_io_bars() {
    require_kvm();
    let (out, serial) = run_probe("mtty");
    assert_line(&serial, "00:01.0 4348:3253 class 070002");
    assert_line(&serial, "  bar0 io addr=0000c000 size=00000008");
    assert_line(&serial, "  bar1 io addr=0000c008 size=00000008");
    // mtty's class, but vgpud's registers: the probe drives the register block, not a 16550.
    assert_line(&serial, "kind: vgpud emulated device (registers in bar0)");
    assert_line(&serial, "bar0 moved to 0000d000");
    assert_line(&serial, "scratch wrote 5aa5c33c read 5aa5c33c ok");
    assert_line(&serial, "irq count=1");
    assert_line(&serial, "irq again count=1");
    assert_line(&serial, "msi count=1");
    // An IO BAR0 has no room for an MSI-X table.
    assert_line(&serial, "msix: not applicable (no MSI-X capability)");
    assert_line(
        &serial,
        "ram bar: not applicable (no prefetchable memory BAR)",
    );
    assert_eq!(out.status.code(), Some(0), "serial:\n{serial}");
}

#[test]
fn pci_probe_lists_two_devices_in_their_own_slots() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let t4 = description(dir.path(), "nvidia-t4");
    let mtty = description(dir.path(), "mtty");
    let log = dir.path().join("serial.log");
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--payload", "pci-probe"])
        .arg("--device")
        .arg(format!("emulated:{}", t4.display()))
        .arg("--device")
        .arg(format!("emulated:{}", mtty.display()))
        .arg("--serial-log")
        .arg(&log)
        .output()
        .unwrap();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert_line(
        &serial,
        "vgpud-vmm: device: 00:01.0 10de:1eb8 emulated (no VFIO)",
    );
    assert_line(
        &serial,
        "vgpud-vmm: device: 00:02.0 4348:3253 emulated (no VFIO)",
    );
    assert_line(&serial, "00:01.0 10de:1eb8 class 030200");
    assert_line(&serial, "00:02.0 4348:3253 class 070002");
    // The second device's BARs follow the first one's in the windows.
    assert_line(&serial, "  bar0 mem32 addr=d2000000 size=01000000");
    assert_line(&serial, "  bar0 io addr=0000c000 size=00000008");
    assert_line(&serial, "  bar1 io addr=0000c008 size=00000008");
    // The first one is exercised, with its interrupt line and MSI.
    assert_line(&serial, "target 00:01");
    assert_line(&serial, "irq count=1");
    assert_line(&serial, "irq again count=1");
    assert_line(&serial, "msi count=1");
    assert_line(&serial, "ram traps=0");
    assert_eq!(out.status.code(), Some(0), "serial:\n{serial}");
}

#[test]
fn a_device_given_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t4 = description(dir.path(), "nvidia-t4");
    let arg = format!("emulated:{}", t4.display());
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--payload", "halt", "--device", &arg, "--device", &arg])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is given twice"));
}

#[test]
fn sigterm_stops_a_guest_that_loops_forever() {
    require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--payload", "loop", "--vcpus", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the loop guest ended by itself"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("vgpud-vmm did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(143));
}

#[test]
fn halt_with_interrupts_disabled_ends_the_guest() {
    require_kvm();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--payload", "halt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Halted"));
}

#[test]
fn missing_kernel_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--kernel", "/nonexistent/bzImage"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read kernel /nonexistent/bzImage: No such file"),
        "{stderr}"
    );
}

#[test]
fn file_that_is_not_a_kernel_is_rejected() {
    require_kvm();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--kernel", env!("CARGO_MANIFEST_DIR")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is a directory"));
    let cargo_toml = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--kernel", cargo_toml])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not a Linux kernel (neither a bzImage nor an ELF vmlinux)"),
        "{stderr}"
    );
}

/// The 64-bit boot path end to end with a kernel small enough to finish on any KVM: long
/// mode, identity paging, RSI = zero page, command line reached through the zero page.
#[test]
fn tiny_elf_kernel_runs_in_long_mode_and_reads_its_zero_page() {
    require_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("tiny.elf");
    std::fs::write(&kernel, vgpud_vmm::payload::long_mode_elf().unwrap()).unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, [0x5au8; 10_000]).unwrap();
    let log = dir.path().join("serial.log");
    // Inside the jail, every file by descriptor, as vgpud launches it.
    let (k, i, l, kvm) = (
        std::fs::File::open(&kernel).unwrap(),
        std::fs::File::open(&initrd).unwrap(),
        std::fs::File::create(&log).unwrap(),
        open_kvm(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.arg("--kernel")
        .arg(inheritable(&k))
        .arg("--initrd")
        .arg(inheritable(&i))
        .args(["--cmdline", "console=ttyS0 vgpud.test=1"])
        .arg("--serial-log")
        .arg(inheritable(&l));
    jailed(&mut cmd, &kvm);
    let out = cmd.output().unwrap();
    let serial = std::fs::read_to_string(&log).unwrap_or_default();
    assert_line(&serial, "elf64: cmdline=console=ttyS0 vgpud.test=1");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Debian's current kernel, fetched by the project's script (cached under target/).
fn test_kernel(elf: bool) -> PathBuf {
    let mut cmd = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/fetch-test-kernel"
    ));
    if elf {
        cmd.arg("--elf");
    }
    let out = cmd.output().expect("run scripts/fetch-test-kernel");
    assert!(
        out.status.success(),
        "scripts/fetch-test-kernel failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn stop(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("vgpud-vmm did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real Debian kernel (the ELF vmlinux inside Debian's bzImage) booted as far as its first
/// console lines: the KVM here runs guest code too slowly to finish booting it, so the guest
/// is stopped once the lines that prove the boot protocol worked are out (banner, command
/// line, the e820 map the VMM wrote, the initrd where the VMM put it).
#[test]
fn debian_kernel_boots_to_its_first_console_lines() {
    require_kvm();
    let kernel = test_kernel(true);
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    std::fs::write(&initrd, [0u8; 4096]).unwrap();
    let log = dir.path().join("serial.log");
    // Booted inside the jail, as vgpud launches it: files by descriptor, nobody, seccomp.
    let (k, i, l, kvm) = (
        std::fs::File::open(&kernel).unwrap(),
        std::fs::File::open(&initrd).unwrap(),
        std::fs::File::create(&log).unwrap(),
        open_kvm(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.args(["--memory-mib", "256", "--kernel"])
        .arg(inheritable(&k))
        .arg("--initrd")
        .arg(inheritable(&i))
        .args(["--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200"])
        .arg("--serial-log")
        .arg(inheritable(&l))
        .stdout(Stdio::null());
    jailed(&mut cmd, &kvm);
    let mut child = cmd.spawn().unwrap();
    let wanted = [
        "Linux version 6.",
        "Command line: console=ttyS0 earlyprintk=serial,ttyS0,115200",
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        "BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved",
        "RAMDISK: [mem 0x0ffff000-0x0fffffff]",
    ];
    // A bound, not a timing assertion: on this KVM the banner takes some 40 s.
    let deadline = Instant::now() + Duration::from_secs(900);
    let serial = loop {
        let serial = std::fs::read_to_string(&log).unwrap_or_default();
        if wanted.iter().all(|w| serial.contains(w)) {
            break serial;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("vgpud-vmm ended ({status}) before the kernel's first lines:\n{serial}");
        }
        if Instant::now() > deadline {
            let _ = stop(&mut child);
            panic!("the kernel's first lines did not come within 900 s:\n{serial}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(stop(&mut child).code(), Some(143), "serial:\n{serial}");
}

/// Debian's bzImage through its own 64-bit entry (startup_64 = load address + 0x200): its
/// decompressor prints nothing (Debian builds without CONFIG_X86_VERBOSE_BOOTUP) and unpacks
/// for longer than a test may wait here, so the test checks that the guest ran from the
/// entry without a fault and reports where it was stopped.
#[test]
fn debian_bzimage_runs_its_decompressor_from_the_64_bit_entry() {
    require_kvm();
    let kernel = test_kernel(false);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--memory-mib", "256", "--kernel"])
        .arg(&kernel)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the decompressor ended the guest (a fault?)"
    );
    let status = stop(&mut child);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        status.code(),
        Some(143),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rip = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stopped: vcpu0 rip="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no stop report in:\n{stdout}"));
    assert_ne!(rip, 0x10_0200, "the guest never left startup_64:\n{stdout}");
}

#[test]
fn kernel_larger_than_guest_memory_asks_for_more() {
    require_kvm();
    let kernel = test_kernel(false);
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args(["--memory-mib", "32", "--kernel"])
        .arg(&kernel)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("give --memory-mib"), "{stderr}");
}

#[test]
fn vfio_device_without_vfio_fails_clearly() {
    require_kvm();
    // Without VFIO (this kind of machine) the VMM says so; with it, the missing device is named.
    let vfio_here = Path::new("/dev/vfio/vfio").exists();
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
        .args([
            "--payload",
            "pci-probe",
            "--device",
            "vfio:/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let want = if vfio_here {
        "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
    } else {
        "VFIO is not available"
    };
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(want),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_vfio_cdev_that_is_no_vfio_device_fails_at_the_iommufd() {
    // No kernel here has iommufd (Debian's 6.1 and 6.12 lack IOMMUFD): the cdev path runs as
    // far as its first iommufd ioctl, on descriptors that are not an iommufd.
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("serial.log")).unwrap();
    let (cdev, iommu, kvm) = (
        std::fs::File::open("/dev/null").unwrap(),
        std::fs::File::open("/dev/null").unwrap(),
        open_kvm(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.args(["--payload", "pci-probe"])
        .arg("--device")
        .arg(format!("vfio-cdev:{}", inheritable(&cdev)))
        .arg("--iommufd")
        .arg(inheritable(&iommu))
        .arg("--serial-log")
        .arg(inheritable(&log));
    jailed(&mut cmd, &kvm);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("VFIO device: VFIO setup failed at iommufd"),
        "{stderr}"
    );
}

#[test]
fn a_vfio_group_and_container_that_are_no_vfio_fail_at_the_container() {
    // The group API on descriptors, as vgpud passes them: the jailed VMM opens no /dev path and
    // gets as far as its first container ioctl on descriptors that are not VFIO's.
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("serial.log")).unwrap();
    let (group, container, kvm) = (
        std::fs::File::open("/dev/null").unwrap(),
        std::fs::File::open("/dev/null").unwrap(),
        open_kvm(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.args(["--payload", "pci-probe"])
        .arg("--device")
        .arg(format!(
            "vfio-group:{}:/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            inheritable(&group)
        ))
        .arg("--vfio-container")
        .arg(inheritable(&container))
        .arg("--serial-log")
        .arg(inheritable(&log));
    jailed(&mut cmd, &kvm);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("VFIO device: VFIO setup failed at container"),
        "{stderr}"
    );
}

#[test]
fn a_jailed_vmm_refuses_a_vfio_device_by_sysfs_path() {
    let kvm = open_kvm();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"));
    cmd.args([
        "--payload",
        "pci-probe",
        "--device",
        "vfio:/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
    ]);
    jailed(&mut cmd, &kvm);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a jailed VMM takes files as descriptors"),
        "{stderr}"
    );
}
