//! Test fixture of the real-kernel tier: a shell script run as root on Debian's kernel booted
//! under QEMU (TCG) by `scripts/real-kernel-run`, with the kernel's mdev core, VFIO, KVM and the
//! sample drivers mtty, mdpy and mbochs (modules under `$RK/modules`). The host's root is the
//! guest's (read-only), so the test binaries' `CARGO_BIN_EXE_*` paths run there unchanged.
//! `run` boots Debian 12's own kernel (6.1: the VFIO group API only); `run_on_cdev_kernel` its
//! 6.12 with VFIO rebuilt with the device cdev and iommufd.
//!
//! Nothing here skips: a download that fails or a QEMU that will not start fails the test with
//! what the scripts said.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const VGPUD: &str = env!("CARGO_BIN_EXE_vgpud");
pub const VGPUCTL: &str = env!("CARGO_BIN_EXE_vgpuctl");
pub const VGPUD_VMM: &str = env!("CARGO_BIN_EXE_vgpud-vmm");
pub const VGPUD_PROVE: &str = env!("CARGO_BIN_EXE_vgpud-prove");
pub const VGPUD_SIM: &str = env!("CARGO_BIN_EXE_vgpud-sim");

/// How long one boot may take before it is retried once (the scripts bound each attempt).
/// Guest shell: a private bus at /tmp/bus, `B` (busctl) and `C` (vgpuctl) on it, and
/// `start_vgpud`, which starts vgpud on the guest's real /sys (its log appended to
/// `$SCRATCH/vgpud.log`, its pid in `VGPUD_PID`) and returns once it answers.
pub const VGPUD_ON_PRIVATE_BUS: &str = r#"mkdir -p /tmp/defs /tmp/conf /tmp/state
dbus-daemon --session --address=unix:path=/tmp/bus --nofork --nopidfile &
for i in $(seq 50); do [ -S /tmp/bus ] && break; sleep 0.1; done
B="busctl --address=unix:path=/tmp/bus"
C="$VGPUCTL --address unix:path=/tmp/bus"
start_vgpud() {
    "$VGPUD" --address unix:path=/tmp/bus --sysfs /sys --events kernel --definitions-dir /tmp/defs \
        --config-dir /tmp/conf --state-dir /tmp/state 2>>"$SCRATCH/vgpud.log" &
    VGPUD_PID=$!
    for i in $(seq 100); do $C parents >/dev/null 2>&1 && break; sleep 0.1; done
}
"#;

pub const BOOT_LIMIT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What one run of a script on the real kernel left behind.
pub struct GuestRun {
    /// The script's exit status (124: the guest hung twice).
    pub status: i32,
    /// Everything the script printed (stdout and stderr).
    pub output: String,
    /// What the scripts printed on the host (downloads, hangs).
    pub host_stderr: String,
    /// The run's scratch directory (shared read-write with the guest at the same path).
    pub scratch: PathBuf,
}

impl GuestRun {
    /// A file the script wrote into `$SCRATCH`.
    pub fn file(&self, name: &str) -> String {
        let path = self.scratch.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the guest left no {}: {e}\n--- output ---\n{}\n--- serial ---\n{}",
                path.display(),
                self.output,
                self.serial()
            )
        })
    }

    /// The guest's serial console (the kernel's messages).
    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.scratch.join("serial")).unwrap_or_default()
    }

    /// Lines `KEY=VALUE` that the script printed, by key (the last one wins).
    pub fn values(&self) -> BTreeMap<String, String> {
        self.output
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The value of `KEY=...`, which the script must have printed.
    pub fn value(&self, key: &str) -> String {
        self.values().remove(key).unwrap_or_else(|| {
            panic!(
                "the script printed no {key}=\n--- output ---\n{}",
                self.output
            )
        })
    }

    /// Panics with everything the run showed unless the script succeeded.
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.status,
            0,
            "the script failed on the real kernel\n--- output ---\n{}\n--- host ---\n{}\n--- serial (tail) ---\n{}",
            self.output,
            self.host_stderr,
            tail(&self.serial(), 40)
        );
        self
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `script` with bash on the real kernel. The script sees `RK`, `REPO`,
/// `SCRATCH`, and the binaries as `VGPUD`, `VGPUCTL`, `VGPUD_VMM`, `VGPUD_PROVE`, `VGPUD_SIM`.
pub fn run(script: &str) -> GuestRun {
    run_with(script, &[])
}

/// The kernel series `run_on_cdev_kernel` boots: Debian 12's 6.12 (bookworm-security), whose
/// iommufd, VFIO (with VFIO_DEVICE_CDEV), mdev and sample modules `scripts/fetch-real-kernel
/// --series 6.12` rebuilds from its source (Debian builds it without IOMMUFD).
pub const CDEV_SERIES: &str = "6.12";

/// `run` on the `CDEV_SERIES` kernel: an mdev there has `vfio-dev/vfioN`, /dev/vfio/devices/vfioN
/// and /dev/iommu exist, and the group API works too.
pub fn run_on_cdev_kernel(script: &str) -> GuestRun {
    run_with(script, &["--series", CDEV_SERIES])
}

/// `run` with extra options for `scripts/real-kernel-run` (`--smp 2`, `--memory 2048`,
/// `--series 6.12`).
pub fn run_with(script: &str, options: &[&str]) -> GuestRun {
    let base = repo().join("target/real-kernel-tests");
    std::fs::create_dir_all(&base).expect("create target/real-kernel-tests");
    let scratch = tempfile::Builder::new()
        .prefix("run.")
        .tempdir_in(&base)
        .expect("scratch directory")
        .keep();
    let prelude = format!(
        "set -u\nVGPUD={VGPUD}\nVGPUCTL={VGPUCTL}\nVGPUD_VMM={VGPUD_VMM}\nVGPUD_PROVE={VGPUD_PROVE}\nVGPUD_SIM={VGPUD_SIM}\n\
         insmod() {{ \"$RK/busybox\" insmod \"$RK/modules/$1.ko\" \"${{@:2}}\"; }}\n\
         rmmod() {{ \"$RK/busybox\" rmmod \"$1\"; }}\n"
    );
    let script_path = scratch.join("script.sh");
    std::fs::write(&script_path, format!("#!/bin/bash\n{prelude}{script}"))
        .expect("write the script");
    let out = Command::new(repo().join("scripts/real-kernel-run"))
        .args(options)
        .arg("--timeout")
        .arg(BOOT_LIMIT.as_secs().to_string())
        .arg("--scratch")
        .arg(&scratch)
        .arg(&script_path)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/real-kernel-run");
    let output = std::fs::read_to_string(scratch.join("output")).unwrap_or_default();
    let host_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = out.status.code().unwrap_or(-1);
    if status == 124 || (status != 0 && !scratch.join("status").exists()) {
        panic!("the real kernel did not run the script (status {status}):\n{host_stderr}");
    }
    GuestRun {
        status,
        output,
        host_stderr,
        scratch,
    }
}

/// `script` run once on the real kernel (and checked to have ended well) for all the tests of a
/// binary that each check one chapter of it; `cell` holds the run.
pub fn run_once(cell: &'static OnceLock<GuestRun>, script: &str) -> &'static GuestRun {
    cell.get_or_init(|| {
        let run = run(script);
        run.assert_ok();
        run
    })
}

/// The probe's log has `line` (trailing blanks aside).
pub fn assert_line(log: &str, line: &str) {
    assert!(
        log.lines().any(|l| l.trim_end() == line),
        "the probe printed no {line:?}:\n{log}"
    );
}

/// The VMM's opens as strace logged them: some (the dynamic loader's), none of a /dev node.
pub fn assert_no_dev_opened(strace: &str) {
    assert!(
        strace.contains("openat("),
        "strace logged no open:\n{strace}"
    );
    let dev: Vec<&str> = strace.lines().filter(|l| l.contains("\"/dev/")).collect();
    assert!(dev.is_empty(), "the VMM opened /dev nodes: {dev:?}");
}
