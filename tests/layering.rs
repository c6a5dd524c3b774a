//! The workspace's arrows, as the built programs show them: vgpuctl (and so every client that
//! links what it links: vgpud-model, vgpud-api, vgpud-policy) carries none of the VMM's or the
//! simulator's crates, and the daemon none of the VMM's (it speaks to vgpud-vmm through
//! vgpud-launch, the command-line contract). Cargo already refuses a `use` across a missing
//! dependency; this checks what the linker kept, by the crates' names in symbols and panic
//! locations.

use std::path::Path;

/// Crates that only the VMM (KVM, VFIO, the payload assembler, the seccomp filter) and the
/// simulator (FUSE) need.
const HEAVY: &[&str] = &[
    "kvm_ioctls",
    "vfio_ioctls",
    "iced_x86",
    "seccompiler",
    "fuser",
];

fn crates_in(binary: &str) -> Vec<&'static str> {
    let bytes = std::fs::read(Path::new(binary)).unwrap_or_else(|e| panic!("{binary}: {e}"));
    HEAVY
        .iter()
        .copied()
        .filter(|name| {
            let dashed = name.replace('_', "-");
            [name.as_bytes(), dashed.as_bytes()]
                .iter()
                .any(|needle| bytes.windows(needle.len()).any(|w| w == *needle))
        })
        .collect()
}

#[test]
fn vgpuctl_links_no_vmm_or_simulator_crate() {
    assert_eq!(
        crates_in(env!("CARGO_BIN_EXE_vgpuctl")),
        Vec::<&str>::new(),
        "vgpuctl must link only the model, the API and the policy"
    );
}

#[test]
fn the_daemon_links_no_hypervisor_crate() {
    // FUSE is there for `vgpud --simulate`, the simulated host in the same process.
    assert_eq!(crates_in(env!("CARGO_BIN_EXE_vgpud")), vec!["fuser"]);
}

#[test]
fn the_check_sees_the_crates_where_they_are() {
    // The same search finds them in the programs that do link them, so the test above could fail.
    assert_eq!(
        crates_in(env!("CARGO_BIN_EXE_vgpud-vmm")),
        vec!["kvm_ioctls", "vfio_ioctls", "iced_x86", "seccompiler"]
    );
    assert_eq!(crates_in(env!("CARGO_BIN_EXE_vgpud-sim")), vec!["fuser"]);
}
