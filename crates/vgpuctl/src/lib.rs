//! `vgpuctl`, the command-line client of vgpud, and the libvirt hook it doubles as.
//!
//! Commands read vgpud's objects with one GetManagedObjects call, resolve UUIDs with
//! Manager.GetDevice and act through the proxies in `dbus::proxies`; errors keep their D-Bus
//! name and map to one exit code per class. The reference printed by `vgpuctl --help` and in
//! the man page — exit codes and the stable JSON schema — is this:
//!
#![doc = concat!("```text\n", include_str!("reference.txt"), "```")]

pub mod args;
pub mod client;
pub mod commands;
pub mod error;
pub mod generate;
pub mod hook;
pub mod launch;
pub mod model;
pub mod monitor;
pub mod output;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use args::{Cli, Command, PolicyCommand};
use client::Client;
use error::{Class, CliError};

/// Unless --timeout says otherwise, vgpuctl gives vgpud this long for a whole command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// vgpuctl's `main`: parses the command line (as libvirt's hook when installed as one), runs
/// the command and turns the outcome into the documented exit code.
pub fn main() -> ExitCode {
    let argv = hook_argv(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("vgpuctl: {e}");
            if json {
                let _ = output::line(&output::error_json(&e).to_string());
            }
            ExitCode::from(e.class.exit_code())
        }
    }
}

/// libvirt runs a hook by its path: a vgpuctl reached through a file in a `qemu.d` directory
/// (or installed as the single `hooks/qemu` script) is the hook.
pub fn invoked_as_hook(argv0: &OsStr) -> bool {
    let path = Path::new(argv0);
    let dir = path.parent().and_then(Path::file_name);
    dir == Some(OsStr::new("qemu.d"))
        || (dir == Some(OsStr::new("hooks")) && path.file_name() == Some(OsStr::new("qemu")))
}

/// Rewrites a hook invocation `<hook> <domain> <op> <sub-op> <extra>` into
/// `vgpuctl libvirt-hook -- <domain> <op> <sub-op> <extra>` (a domain name may start with '-').
pub fn hook_argv(argv: Vec<OsString>) -> Vec<OsString> {
    match argv.split_first() {
        Some((argv0, rest)) if invoked_as_hook(argv0) => {
            let mut out: Vec<OsString> = vec!["vgpuctl".into(), "libvirt-hook".into(), "--".into()];
            out.extend(rest.iter().cloned());
            out
        }
        _ => argv,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::other(format!("cannot start the async runtime: {e}")))
}

/// Runs a parsed command; `Ok` carries the exit code of a command that printed its own
/// failure (`policy check` with problems).
pub fn run(cli: Cli) -> Result<u8, CliError> {
    let bus = cli.bus.choice();
    let timeout = cli.timeout.map(Duration::from_secs);
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Check { files },
        } => policy_check(&files, cli.json),
        Command::Launch {
            uuids,
            payload,
            kernel,
            initrd,
            cmdline,
            memory_mib,
            vcpus,
        } => {
            runtime()?.block_on(async {
                let mut client = Client::connect(&bus, timeout.unwrap_or(DEFAULT_TIMEOUT)).await?;
                let args = launch::LaunchArgs {
                    uuids: &uuids,
                    payload: payload.as_deref(),
                    kernel: kernel.as_deref(),
                    initrd: initrd.as_deref(),
                    cmdline: cmdline.as_deref(),
                    memory_mib,
                    vcpus,
                };
                // Following the console takes as long as the guest runs, not the call bound.
                client.renew(Duration::from_secs(24 * 3600));
                launch::run(&mut client, &args, cli.json).await
            })
        }
        Command::Completions { shell } => generate::completions(shell).map(|_| 0),
        Command::Man { dir } => generate::man(dir.as_deref()).map(|_| 0),
        Command::LibvirtHook(hook) => hook::run(
            &hook,
            &bus,
            timeout.unwrap_or(hook::DEFAULT_TIMEOUT),
            runtime,
        )
        .map(|_| 0),
        command => runtime()?.block_on(async {
            let client = Client::connect(&bus, timeout.unwrap_or(DEFAULT_TIMEOUT)).await?;
            commands::run(&command, &client, cli.json).await.map(|_| 0)
        }),
    }
}

/// `policy check`: offline, with the daemon's own parser.
fn policy_check(files: &[PathBuf], json: bool) -> Result<u8, CliError> {
    match vgpud_policy::check_files(files) {
        Ok(policy) => {
            if json {
                output::json(
                    &json!({"valid": true, "summary": policy.summary(), "diagnostics": []}),
                )?;
            } else {
                output::line(&format!("policy is valid: {}", policy.summary()))?;
            }
            Ok(0)
        }
        Err(diagnostics) => {
            if json {
                let list: Vec<_> = diagnostics
                    .iter()
                    .map(|d| {
                        json!({"file": d.file.display().to_string(), "line": d.line,
                               "column": d.column, "message": d.message})
                    })
                    .collect();
                output::json(&json!({"valid": false, "summary": null, "diagnostics": list}))?;
            } else {
                for d in &diagnostics {
                    output::line(&d.to_string())?;
                }
            }
            eprintln!(
                "vgpuctl: the policy has {} problem{}",
                diagnostics.len(),
                if diagnostics.len() == 1 { "" } else { "s" }
            );
            Ok(Class::InvalidArgument.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_is_recognised_by_where_it_is_installed() {
        assert!(invoked_as_hook(OsStr::new(
            "/etc/libvirt/hooks/qemu.d/vgpud"
        )));
        assert!(invoked_as_hook(OsStr::new("/etc/libvirt/hooks/qemu")));
        assert!(!invoked_as_hook(OsStr::new("/usr/bin/vgpuctl")));
        assert!(!invoked_as_hook(OsStr::new("vgpuctl")));
        assert!(!invoked_as_hook(OsStr::new("/usr/sbin/vgpud")));
    }

    #[test]
    fn hook_arguments_are_passed_through_positionally() {
        let argv: Vec<OsString> = [
            "/etc/libvirt/hooks/qemu.d/vgpud",
            "-vm",
            "prepare",
            "begin",
            "-",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let cli = Cli::try_parse_from(hook_argv(argv)).unwrap();
        let Command::LibvirtHook(h) = cli.command else {
            panic!("not the hook");
        };
        assert_eq!(
            (h.domain.as_str(), h.operation.as_str()),
            ("-vm", "prepare")
        );
        assert_eq!(h.state_dir, PathBuf::from("/run/vgpud/libvirt-hook"));
    }

    #[test]
    fn launch_needs_a_device() {
        assert!(Cli::try_parse_from(["vgpuctl", "launch"]).is_err());
        assert!(
            Cli::try_parse_from(["vgpuctl", "launch", "U", "--payload", "p", "--kernel", "k"])
                .is_err()
        );
    }
}
