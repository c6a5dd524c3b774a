//! Shell completions and man pages, generated from the same clap definition as the parser, so
//! they can never disagree with it. The Makefile calls these at build time.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use super::args::{Cli, REFERENCE};
use super::error::CliError;

pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "vgpuctl", &mut out);
    write_stdout(&out)
}

/// `vgpuctl man`: the main page on stdout; with a directory, one page per visible command
/// (vgpuctl.1, vgpuctl-create.1, ...).
pub fn man(dir: Option<&Path>) -> Result<(), CliError> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Gives subcommands their display names (vgpuctl-create) for their own pages.
    cmd.build();
    let mut main = Vec::new();
    main_page(&cmd, &mut main)
        .map_err(|e| CliError::other(format!("cannot render the man page: {e}")))?;
    let Some(dir) = dir else {
        return write_stdout(&main);
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            sub_pages(sub.clone(), dir)?;
        }
        std::fs::write(dir.join("vgpuctl.1"), &main)
    };
    write()
        .map_err(|e| CliError::other(format!("cannot write man pages to {}: {e}", dir.display())))
}

fn sub_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub.clone(), dir)?;
    }
    clap_mangen::Man::new(cmd).generate_to(dir).map(|_| ())
}

/// clap_mangen's sections, then the reference (exit codes, JSON schema) as sections of its
/// own, unfilled so the tables keep their columns.
fn main_page(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    out.extend_from_slice(reference_roff(REFERENCE).as_bytes());
    man.render_version_section(out)
}

/// Plain text to roff: a line that starts in column 0 with an upper-case word ("EXIT CODES",
/// "JSON OUTPUT (--json)") is a section heading; everything else is kept as it is, unfilled.
fn reference_roff(text: &str) -> String {
    let mut roff = String::new();
    let mut open = false;
    for line in text.lines() {
        let first = line.split(' ').next().unwrap_or_default();
        let heading = first.len() >= 2 && first.chars().all(|c| c.is_ascii_uppercase());
        if heading {
            if open {
                roff.push_str(".fi\n");
            }
            roff.push_str(&format!(".SH {}\n.nf\n", escape(line)));
            open = true;
        } else if open {
            roff.push_str(&escape(line));
            roff.push('\n');
        }
    }
    if open {
        roff.push_str(".fi\n");
    }
    roff
}

fn escape(line: &str) -> String {
    let text = line.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
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
    fn reference_text_becomes_unfilled_sections() {
        let roff = reference_roff("EXIT CODES\n  0  ok\n.dot \\ x-y\nJSON OUTPUT (--json)\n  a\n");
        assert_eq!(
            roff,
            ".SH EXIT CODES\n.nf\n  0  ok\n\\&.dot \\e x\\-y\n.fi\n.SH JSON OUTPUT (\\-\\-json)\n.nf\n  a\n.fi\n"
        );
    }

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
