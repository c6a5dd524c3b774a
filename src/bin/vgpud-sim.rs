//! vgpud-sim: mounts a simulated sysfs with mdev parents, or drives a running one (`ctl`).
//! The program is `vgpud_sim::cli` (crates/sim); this only calls in.

fn main() -> std::process::ExitCode {
    vgpud_sim::cli::main()
}
