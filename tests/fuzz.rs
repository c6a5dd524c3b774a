//! Hostile input: every fuzz target runs for a bounded time and must find nothing.
//! `VGPUD_FUZZ_SECONDS` (default 3) sets the time per target, `VGPUD_FUZZ_SEED` the seed
//! (default: from the clock, printed so a failure can be run again).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vgpud_testkit::prove::fuzz::{self, Budget};

fn seconds() -> f64 {
    match std::env::var("VGPUD_FUZZ_SECONDS") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("VGPUD_FUZZ_SECONDS={s:?} is not a number of seconds")),
        Err(_) => 3.0,
    }
}

fn seed() -> u64 {
    match std::env::var("VGPUD_FUZZ_SEED") {
        Ok(s) => {
            let digits = s.trim_start_matches("0x");
            u64::from_str_radix(digits, if digits.len() < s.len() { 16 } else { 10 })
                .unwrap_or_else(|_| panic!("VGPUD_FUZZ_SEED={s:?} is not a number"))
        }
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    }
}

fn fuzz(name: &str) {
    let target = fuzz::target(name).unwrap_or_else(|| panic!("no fuzz target {name}"));
    let seed = seed();
    let report = fuzz::run(
        &target,
        Budget::Time(Duration::from_secs_f64(seconds())),
        seed,
    );
    eprintln!(
        "fuzz {name}: {} cases in {:.1} s ({:.0}/s), VGPUD_FUZZ_SEED={seed:#x}",
        report.cases,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    assert!(report.cases > 0, "fuzz {name} ran no case");
    let findings: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    assert!(
        findings.is_empty(),
        "fuzz {name} (VGPUD_FUZZ_SEED={seed:#x}) found {}:\n{}",
        findings.len(),
        findings.join("\n")
    );
}

#[test]
fn policy() {
    fuzz("policy");
}

#[test]
fn uevent() {
    fuzz("uevent");
}

#[test]
fn libvirt_xml() {
    fuzz("libvirt-xml");
}

#[test]
fn mdevctl_json() {
    fuzz("mdevctl-json");
}

#[test]
fn store_scan() {
    fuzz("store-scan");
}

#[test]
fn sysfs_text() {
    fuzz("sysfs-text");
}

#[test]
fn sysfs_tree() {
    fuzz("sysfs-tree");
}

#[test]
fn every_target_is_run_here() {
    let here = [
        "policy",
        "uevent",
        "libvirt-xml",
        "mdevctl-json",
        "store-scan",
        "sysfs-text",
        "sysfs-tree",
    ];
    let names: Vec<_> = fuzz::targets().iter().map(|t| t.name).collect();
    assert_eq!(names, here);
}
