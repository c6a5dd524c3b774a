//! vgpud-prove: the proof suite. The program is `vgpud_testkit::prove::cli` (crates/testkit);
//! this only calls in.

fn main() -> std::process::ExitCode {
    vgpud_testkit::prove::cli::main()
}
