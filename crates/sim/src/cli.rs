//! vgpud-sim: mount a simulated sysfs with mdev parents, or drive a running one (`ctl`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::control::{Client, Request};
use crate::{self as sim, SimOptions, Simulator};
use clap::{Parser, Subcommand};

/// Mount a FUSE file system at DIR that behaves like /sys for simulated GPUs.
#[derive(Parser)]
#[command(name = "vgpud-sim", version, after_help = AFTER_HELP)]
struct MountArgs {
    /// Mount point (created if missing).
    dir: PathBuf,
    /// Built-in profile NAME[:COUNT]: mtty, mdpy, mbochs, i915-gvtg, nvidia-t4, nvidia-a100, nvidia-l40s.
    #[arg(long = "profile", short = 'p')]
    profiles: Vec<String>,
    /// TOML file of [[device]] tables (format: docs in README, examples in src/sim/profiles/).
    #[arg(long = "profile-file")]
    profile_files: Vec<PathBuf>,
    /// Directory for the control and uevent sockets (default DIR.sim).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Directory where held devices get an open vfio/<group> node (default RUN_DIR/dev).
    #[arg(long)]
    dev_dir: Option<PathBuf>,
    /// Also broadcast uevents on NETLINK_KOBJECT_UEVENT in this network namespace (group 1 in
    /// the kernel's format, group 2 in libudev's, as udevd), so udev-based tools see devices
    /// come and go. Needs CAP_NET_ADMIN; use a private network namespace (`unshare -n`).
    #[arg(long)]
    netlink_uevents: bool,
}

const AFTER_HELP: &str =
    "Drive a running simulator with `vgpud-sim ctl DIR COMMAND` (see `vgpud-sim ctl --help`).";

/// Control a running simulator.
#[derive(Parser)]
#[command(name = "vgpud-sim ctl")]
struct CtlArgs {
    /// The simulator's mount point (its sockets are in DIR.sim unless --run-dir).
    dir: PathBuf,
    #[arg(long)]
    run_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: CtlCommand,
}

/// The control channel's requests, and what only the command line does.
#[derive(Subcommand)]
enum CtlCommand {
    #[command(flatten)]
    Request(Request),
    /// Print uevents as they come, one line each, until interrupted.
    Monitor,
}

/// The `vgpud-sim` program.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VGPUD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("ctl") {
        let mut rest = vec!["vgpud-sim ctl".to_owned()];
        rest.extend(args.into_iter().skip(2));
        ctl(CtlArgs::parse_from(rest))
    } else {
        run(MountArgs::parse())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpud-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: MountArgs) -> Result<(), String> {
    let opts = SimOptions {
        mountpoint: args.dir,
        profiles: args.profiles,
        profile_files: args.profile_files,
        run_dir: args.run_dir,
        dev_dir: args.dev_dir,
        netlink_uevents: args.netlink_uevents,
    };
    let signals = block_termination_signals()?;
    let sim = Simulator::start(&opts).map_err(|e| e.to_string())?;
    println!("mounted {}", sim.mountpoint().display());
    println!("control {}", sim.control_socket().display());
    println!("uevents {}", sim.uevent_socket().display());
    println!("dev {}", sim.dev_dir().display());
    println!("ready");
    let signal = signals
        .wait()
        .map_err(|e| format!("waiting for a signal: {e}"))?;
    tracing::info!("{signal:?}: unmounting");
    sim.stop().map_err(|e| format!("unmount failed: {e}"))
}

fn block_termination_signals() -> Result<nix::sys::signal::SigSet, String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    // Blocked before any thread starts, so every thread inherits the mask and only `wait` sees them.
    set.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(set)
}

fn ctl(args: CtlArgs) -> Result<(), String> {
    let mountpoint = std::fs::canonicalize(&args.dir).unwrap_or(args.dir.clone());
    let run_dir = args
        .run_dir
        .unwrap_or_else(|| sim::default_run_dir(&mountpoint));
    let req = match args.command {
        CtlCommand::Monitor => return monitor(&sim::uevent_socket(&run_dir)),
        CtlCommand::Request(req) => req,
    };
    let socket = sim::control_socket(&run_dir);
    let mut client = Client::connect(&socket)
        .map_err(|e| format!("cannot reach the simulator at {}: {e}", socket.display()))?;
    let result = client.ok(&req).map_err(|e| e.to_string())?;
    if !result.is_null() {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    }
    Ok(())
}

fn monitor(path: &std::path::Path) -> Result<(), String> {
    let sub = sim::feed::Subscriber::connect(path)
        .map_err(|e| format!("cannot subscribe to {}: {e}", path.display()))?;
    loop {
        match sub.next(Duration::from_secs(3600)) {
            Ok(Some(e)) => {
                let props: Vec<String> = e.props.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{} {} {} {} {}",
                    e.seqnum,
                    e.action,
                    e.devpath,
                    e.subsystem,
                    props.join(" ")
                );
            }
            Ok(None) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}
