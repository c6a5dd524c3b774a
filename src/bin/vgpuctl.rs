//! vgpuctl: the command-line client of vgpud (and its libvirt hook). Everything is in
//! `vgpud::cli`; this only calls in.

fn main() -> std::process::ExitCode {
    vgpuctl::main()
}
