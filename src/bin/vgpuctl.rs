//! vgpuctl: the command-line client of vgpud (and its libvirt hook). Everything is in
//! the `vgpuctl` crate (crates/vgpuctl), which links the model, the API and the policy only; this
//! only calls in.

fn main() -> std::process::ExitCode {
    vgpuctl::main()
}
