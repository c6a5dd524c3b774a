//! Shell completions and man pages, generated from the same clap definition as the parser, so
//! they can never disagree with it. The Makefile calls these at build time.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::args::Cli;
use super::error::CliError;

pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vgpuctl", &mut out);
    write_stdout(&out)
}

/// `vgpuctl man`: the main page on stdout; with a directory, one page per visible command
/// (vgpuctl.1, vgpuctl-create.1, ...).
pub fn man(dir: Option<&Path>) -> Result<(), CliError> {
    match dir {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|_| clap_mangen::generate_to(Cli::command(), dir))
            .map_err(|e| {
                CliError::other(format!("cannot write man pages to {}: {e}", dir.display()))
            }),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| CliError::other(format!("cannot render the man page: {e}")))?;
            write_stdout(&out)
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::other(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        man(Some(dir.path())).unwrap();
        for page in [
            "vgpuctl.1",
            "vgpuctl-create.1",
            "vgpuctl-libvirt-hook.1",
            "vgpuctl-policy-check.1",
        ] {
            assert!(dir.path().join(page).exists(), "{page} missing");
        }
        assert!(
            !dir.path().join("vgpuctl-man.1").exists(),
            "hidden commands get no page"
        );
        let main = std::fs::read_to_string(dir.path().join("vgpuctl.1")).unwrap();
        assert!(
            main.contains("EXIT CODES"),
            "the reference is in the man page"
        );
    }
}
