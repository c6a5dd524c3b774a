//! vgpud-vmm timings on /dev/kvm, N=20 each, p50/p99:
//! VM setup + teardown (in process), launch to the guest's first serial byte and launch to
//! exit for the pci-probe payload (the real binary with an emulated T4).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const N: usize = 20;

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<40} n={} p50={:>9.3} ms p99={:>9.3} ms",
        samples.len(),
        pick(0.50).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3
    );
}

fn main() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("skipping: /dev/kvm does not exist");
        return;
    }
    let mut setup = Vec::new();
    for _ in 0..N {
        let t = Instant::now();
        let machine = vgpud::vmm::kvm::Machine::new(64, 1).expect("VM setup");
        drop(machine);
        setup.push(t.elapsed());
    }
    report("vm setup+teardown (64 MiB, 1 vCPU)", setup);

    let dir = tempfile::tempdir().expect("tempdir");
    let templates = vgpud::sim::profile::builtin("nvidia-t4").expect("profile");
    let desc = dir.path().join("t4.json");
    std::fs::write(
        &desc,
        serde_json::to_vec(&templates[0].guest).expect("json"),
    )
    .expect("write");
    let (mut first, mut total) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let t = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vgpud-vmm"))
            .args(["--payload", "pci-probe", "--console", "--device"])
            .arg(format!("emulated:{}", desc.display()))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn vgpud-vmm");
        let mut out = child.stdout.take().expect("stdout");
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let mut first_at = None;
        loop {
            let n = out.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            // The guest's first bytes: its banner (the VMM's own lines come before it).
            if first_at.is_none() && seen.windows(10).any(|w| w == b"pci-probe:") {
                first_at = Some(t.elapsed());
            }
        }
        let status = child.wait().expect("wait");
        total.push(t.elapsed());
        assert!(
            status.success(),
            "pci-probe failed:\n{}",
            String::from_utf8_lossy(&seen)
        );
        first.push(first_at.expect("guest printed nothing"));
    }
    report("launch -> first guest serial byte", first);
    report("launch -> pci-probe exit(0)", total);
    println!("qemu-system-x86_64 not compared (not installed here)");
}
