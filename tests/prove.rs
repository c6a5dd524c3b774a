//! CI runs the bounded proof: `vgpud-prove --quick` (load, faults, crash storms, parser and
//! D-Bus fuzzing, the side-by-side comparison) against the binaries of this build. Every check
//! in its summary must pass, and every section must have reported.

use std::process::Command;

#[test]
fn vgpud_prove_quick_passes() {
    let seed = std::env::var("VGPUD_PROVE_SEED").unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            .to_string()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_vgpud-prove"))
        .args(["--quick", "--seed", &seed])
        .output()
        .expect("vgpud-prove runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "vgpud-prove --quick failed (seed {seed}):\n{stdout}\n{stderr}"
    );
    for section in ["load", "faults", "crash", "fuzz", "compare"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(section)),
            "no {section} rows in the summary:\n{stdout}"
        );
    }
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    assert!(!stdout.lines().any(|l| l.contains(" NO ")), "{stdout}");
}
