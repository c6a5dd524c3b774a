//! vgpud-vmm: one KVM guest per process. The program is `vgpud_vmm::cli` (crates/vmm); this
//! only calls in.

fn main() -> std::process::ExitCode {
    vgpud_vmm::cli::main()
}
