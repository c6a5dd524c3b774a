//! vgpud-vmm against QEMU on /dev/kvm, side by side in one run, N=20 each, p50/p99.
//!
//! The same guest for both: the built-in `hello` payload (prints one line on COM1, exits
//! through port 0xf4). vgpud-vmm runs it with `--payload hello`; QEMU runs the very same bytes
//! behind a 32-byte Multiboot header (`payload::multiboot_image`) with `-kernel`, so SeaBIOS
//! and QEMU's multiboot option ROM enter it in the same 32-bit flat state, and an
//! isa-debug-exit device at 0xf4 ends QEMU. QEMU is Debian 12's qemu-system-x86 7.2, unpacked
//! privately by scripts/fetch-qemu (it cannot be installed beside this host's qemu-utils).
//!
//! Measured: VM setup + teardown (vgpud-vmm in process; QEMU as a process started with `-S`,
//! so no guest code runs, and told `quit` on its monitor), launch to the guest's first serial
//! byte, launch to exit (for vgpud-vmm this is also its process setup + teardown: `hello` runs
//! a few dozen instructions). `cargo bench --bench vmm` (release); asserts nothing about time.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const N: usize = 20;

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<58} n={} p50={:>9.3} ms p99={:>9.3} ms",
        samples.len(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3
    );
}

/// Debian's QEMU unpacked by scripts/fetch-qemu.
struct Qemu {
    root: PathBuf,
}

impl Qemu {
    fn fetch() -> Result<Self, String> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-qemu");
        let out = Command::new(script)
            .output()
            .map_err(|e| format!("cannot run {script}: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        let root = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(Self { root: root.into() })
    }

    fn command(&self) -> Command {
        let r = &self.root;
        let mut cmd = Command::new(r.join("usr/bin/qemu-system-x86_64"));
        cmd.env(
            "LD_LIBRARY_PATH",
            format!(
                "{}:{}",
                r.join("usr/lib/x86_64-linux-gnu").display(),
                r.join("lib/x86_64-linux-gnu").display()
            ),
        )
        .arg("-L")
        .arg(r.join("usr/share/qemu"))
        .arg("-L")
        .arg(r.join("usr/share/seabios"))
        .args([
            "-machine",
            "pc,accel=kvm",
            "-m",
            "64",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ]);
        cmd
    }

    /// Runs `kernel` with COM1 on stdout and the debug-exit device at 0xf4.
    fn guest(&self, kernel: &Path) -> Command {
        let mut cmd = self.command();
        cmd.args([
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x01",
            "-kernel",
        ])
        .arg(kernel);
        cmd
    }
}

/// Spawns `cmd` with stdout piped; returns (time to the first byte of `marker`, time to exit,
/// everything printed, exit code).
fn time_guest(mut cmd: Command, marker: &[u8]) -> (Option<Duration>, Duration, String, i32) {
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the VMM");
    let mut out = child.stdout.take().expect("stdout");
    let (mut seen, mut buf, mut first_at) = (Vec::new(), [0u8; 256], None);
    loop {
        let n = out.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if first_at.is_none() && seen.windows(marker.len()).any(|w| w == marker) {
            first_at = Some(t.elapsed());
        }
    }
    let status = child.wait().expect("wait");
    let total = t.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let text = format!("{}{err}", String::from_utf8_lossy(&seen));
    (first_at, total, text, status.code().unwrap_or(-1))
}

fn vgpud_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not and wants no run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("vmm bench skipped: run it with cargo bench --bench vmm");
        return;
    }
    // Every machine of this kind has /dev/kvm: a missing one fails the bench, not skips it.
    assert!(
        Path::new("/dev/kvm").exists(),
        "vmm bench: /dev/kvm does not exist (load kvm, or give the bench access to the device)"
    );
    let qemu = match Qemu::fetch() {
        Ok(q) => Some(q),
        Err(e) => {
            println!("QEMU not compared: scripts/fetch-qemu failed: {e}");
            None
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let hello = vgpud_vmm::payload::builtin("hello")
        .expect("hello is built in")
        .expect("hello assembles");
    let multiboot = dir.path().join("hello.multiboot");
    std::fs::write(&multiboot, vgpud_vmm::payload::multiboot_image(&hello)).expect("write");
    let marker = vgpud_vmm::payload::HELLO.as_bytes();

    let mut setup = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        let machine = vgpud_vmm::kvm::Machine::new(None, 64, 1).expect("VM setup");
        drop(machine);
        setup.push(t.elapsed());
    }
    report(
        "vgpud-vmm VM setup+teardown, in process (64 MiB, 1 vCPU)",
        setup,
    );

    if let Some(q) = &qemu {
        let mut process = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            let mut child = q
                .command()
                .args(["-S", "-monitor", "stdio"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn qemu");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"quit\n")
                .expect("write quit");
            let out = child.wait_with_output().expect("wait qemu");
            process.push(t.elapsed());
            assert!(
                out.status.success(),
                "qemu -S + quit failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        report(
            "qemu process: setup (-S, no guest code), quit, teardown",
            process,
        );
    }

    let (mut first, mut total) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let mut cmd = vgpud_vmm();
        cmd.args(["--payload", "hello", "--console"]);
        let (first_at, done, text, code) = time_guest(cmd, marker);
        assert_eq!(code, 0, "vgpud-vmm --payload hello failed:\n{text}");
        first.push(first_at.expect("hello printed nothing"));
        total.push(done);
    }
    report("vgpud-vmm launch -> hello's first serial byte", first);
    report("vgpud-vmm launch -> hello's exit", total);

    if let Some(q) = &qemu {
        let (mut first, mut total) = (Vec::new(), Vec::new());
        for _ in 0..N {
            let (first_at, done, text, code) = time_guest(q.guest(&multiboot), marker);
            // isa-debug-exit ends QEMU with (code << 1) | 1: 1 for hello's exit(0).
            assert_eq!(code, 1, "qemu -kernel hello.multiboot failed:\n{text}");
            first.push(first_at.expect("hello printed nothing under QEMU"));
            total.push(done);
        }
        report("qemu launch -> hello's first serial byte", first);
        report("qemu launch -> hello's exit", total);
    }

    // The vGPU path, vgpud-vmm only (QEMU has no emulated vGPU to give the probe).
    let templates = vgpud_sim::profile::builtin("nvidia-t4").expect("profile");
    let desc = dir.path().join("t4.json");
    std::fs::write(
        &desc,
        serde_json::to_vec(&templates[0].guest).expect("json"),
    )
    .expect("write");
    let (mut first, mut total) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let mut cmd = vgpud_vmm();
        cmd.args(["--payload", "pci-probe", "--console", "--device"])
            .arg(format!("emulated:{}", desc.display()));
        let (first_at, done, text, code) = time_guest(cmd, b"pci-probe:");
        assert_eq!(code, 0, "pci-probe failed:\n{text}");
        first.push(first_at.expect("pci-probe printed nothing"));
        total.push(done);
    }
    report("vgpud-vmm launch -> pci-probe's first serial byte", first);
    report(
        "vgpud-vmm launch -> pci-probe's exit(0), emulated T4",
        total,
    );

    match launch_guest_over_dbus() {
        Ok((first, total)) => {
            report("D-Bus LaunchGuest -> hello's first serial byte", first);
            report("D-Bus LaunchGuest -> Guest State exited", total);
        }
        Err(e) => println!("D-Bus LaunchGuest not measured: {e}"),
    }
}

/// `vgpud --simulate nvidia-t4` as a client sees it: Manager.LaunchGuest with the `hello`
/// payload on a created vGPU, timed to the first byte in the guest's SerialLog and to the
/// Guest object's State turning "exited".
fn launch_guest_over_dbus() -> Result<(Vec<Duration>, Vec<Duration>), String> {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use vgpud_api::proxies::{GuestProxy, ManagerProxy};
    use zbus::zvariant::Value;

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_vgpud"))
        .args(["--simulate", "nvidia-t4", "--no-polkit"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("vgpud: {e}"))?;
    let stdout = daemon.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(a) = l.strip_prefix("VGPUD_BUS_ADDRESS=") {
                    break a.to_owned();
                }
            }
            _ => {
                let _ = daemon.kill();
                return Err("vgpud --simulate printed no bus address".into());
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        let conn = zbus::connection::Builder::address(address.as_str())
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let m = ManagerProxy::new(&conn).await.map_err(|e| e.to_string())?;
        let dev = m
            .create_device("GRID T4-2Q", HashMap::new())
            .await
            .map_err(|e| format!("CreateDevice: {e}"))?;
        let (mut first, mut total) = (Vec::new(), Vec::new());
        for _ in 0..N {
            let t = Instant::now();
            let path = m
                .launch_guest(
                    std::slice::from_ref(&dev),
                    HashMap::from([("payload", Value::from("hello"))]),
                )
                .await
                .map_err(|e| format!("LaunchGuest: {e}"))?;
            let guest = GuestProxy::builder(&conn)
                .path(path)
                .map_err(|e| e.to_string())?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let log = PathBuf::from(guest.serial_log().await.map_err(|e| e.to_string())?);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut seen = None;
            loop {
                if seen.is_none() && std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
                    seen = Some(t.elapsed());
                }
                let state = guest.state().await.map_err(|e| e.to_string())?;
                if state != "running" {
                    if state != "exited" {
                        return Err(format!("the guest ended {state}"));
                    }
                    break;
                }
                if Instant::now() > deadline {
                    return Err("the guest did not end within 30 s".into());
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            total.push(t.elapsed());
            first.push(seen.unwrap_or_else(|| t.elapsed()));
        }
        Ok((first, total))
    });
    let _ = Command::new("kill")
        .args(["-INT", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    result
}
