//! vgpud: the mdev/vGPU manager daemon. Parses flags and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vgpud_api::BusChoice;
use vgpud_daemon::daemon::{self, DaemonOptions};
use vgpud_daemon::events::EventSpec;
use vgpud_sim::{SimOptions, Simulator};
use vgpud_testkit::privbus::{BusKind, PrivateBus};

/// The vendor-neutral mdev/vGPU manager: publishes GPUs, vGPU types and devices on D-Bus.
#[derive(Parser)]
#[command(name = "vgpud", version)]
struct Args {
    /// Serve on the system bus (the default).
    #[arg(long, conflicts_with_all = ["session", "address"])]
    system: bool,
    /// Serve on the session bus.
    #[arg(long, conflicts_with = "address")]
    session: bool,
    /// Serve on the bus at this D-Bus address.
    #[arg(long, value_name = "ADDR")]
    address: Option<String>,
    /// Root of sysfs.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs: PathBuf,
    /// Root of device nodes (VFIO groups are DIR/vfio/N).
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev: PathBuf,
    /// Where to find processes holding devices open.
    #[arg(long = "proc", value_name = "DIR", default_value = "/proc")]
    proc_root: PathBuf,
    /// Event source: udev, kernel (raw netlink, no udevd needed) or sim:SOCKET.
    #[arg(long, value_name = "SPEC", default_value = "udev")]
    events: EventSpec,
    /// mdevctl's definitions directory.
    #[arg(long, value_name = "DIR")]
    definitions_dir: Option<PathBuf>,
    /// Configuration directory (policy in DIR/policy.d/*.toml).
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// vgpud's own state (device owners, definition metadata).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// With --simulate or --private-bus: do not start a polkit authority on the private bus.
    #[arg(long)]
    no_polkit: bool,
    /// Serve on a private dbus-daemon with the real polkitd on it, as --simulate does, but on
    /// the host's (or --sysfs) devices: try vgpud without touching the system bus. Prints the
    /// bus address.
    #[arg(long, conflicts_with_all = ["system", "session", "address", "simulate"])]
    private_bus: bool,
    /// mdevctl's library directory; call-out and notifier scripts are run from
    /// DIR/scripts.d/{callouts,notifiers} and from the same under --definitions-dir.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/mdevctl")]
    mdevctl_lib_dir: PathBuf,
    /// Where the NVIDIA vGPU scheduler's modprobe options are written ([[scheduler]] policy
    /// rules) [default: /etc/modprobe.d; with --simulate, a temporary directory]
    #[arg(long, value_name = "DIR")]
    modprobe_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback IP:PORT) or on a unix
    /// socket (an absolute path).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<vgpud_daemon::metrics::MetricsListen>,
    #[command(subcommand)]
    command: Option<Sub>,
    /// Run on a built-in simulated host: mounts vgpud-sim in a temporary directory, starts a
    /// private bus unless one is given, and prints how to talk to it. Optional profiles
    /// (NAME[:COUNT]) replace the default host.
    #[arg(long, value_name = "PROFILE", num_args = 0.., conflicts_with_all = ["sysfs", "events"])]
    simulate: Option<Vec<String>>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Validate policy files offline; prints file:line:column for every problem.
    CheckPolicy {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

const DEFAULT_SIMULATED_HOST: &[&str] = &["nvidia-t4:2", "nvidia-a100", "nvidia-l40s", "mtty"];

fn main() -> ExitCode {
    // Start-up reads sysfs from several threads and the runtime has one per core: glibc would
    // give each its own arena and keep what they freed. Two arenas hold a daemon that mostly
    // waits.
    // SAFETY: mallopt only tunes glibc's allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VGPUD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vgpud: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vgpud: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: the daemon polls it only after announcing readiness, and a SIGTERM in
/// between would otherwise kill it with the default action (leaving the simulator mounted).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            tracing::error!("cannot listen for SIGINT/SIGTERM");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        }
    }
}

/// A private system-style dbus-daemon with vgpud's bus policy, and (unless `no_polkit`) the
/// real polkitd on it, so authorization works as on a host.
fn private_bus(
    no_polkit: bool,
) -> Result<(PrivateBus, Option<vgpud_testkit::polkitd::Polkitd>), String> {
    let bus = PrivateBus::start_with_policy(
        BusKind::System,
        &[
            ("org.vgpud.conf", include_str!("../../dbus/org.vgpud.conf")),
            (
                "org.freedesktop.PolicyKit1.conf",
                vgpud_testkit::polkitd::BUS_POLICY,
            ),
        ],
    )
    .map_err(|e| format!("cannot start a private dbus-daemon: {e}"))?;
    if no_polkit {
        return Ok((bus, None));
    }
    let actions = [("org.vgpud.policy", vgpud_testkit::polkitd::ACTIONS)];
    let polkit = match vgpud_testkit::polkitd::Polkitd::start(bus.address(), &actions, &[]) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(
                "no polkit authority on the private bus ({e}); only root may change anything"
            );
            None
        }
    };
    Ok((bus, polkit))
}

fn bus_choice(args: &Args) -> Option<BusChoice> {
    if let Some(a) = &args.address {
        Some(BusChoice::Address(a.clone()))
    } else if args.session {
        Some(BusChoice::Session)
    } else if args.system {
        Some(BusChoice::System)
    } else {
        None
    }
}

fn check_policy(files: &[PathBuf]) -> Result<(), String> {
    match vgpud_policy::check_files(files) {
        Ok(policy) => {
            println!("policy is valid: {}", policy.summary());
            Ok(())
        }
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            Err(format!("{} problem(s) found", diags.len()))
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(Sub::CheckPolicy { files }) = &args.command {
        return check_policy(files);
    }
    let defaults = DaemonOptions::default();
    let mut opts = DaemonOptions {
        bus: bus_choice(&args).unwrap_or(BusChoice::System),
        sysfs: args.sysfs.clone(),
        dev: args.dev.clone(),
        proc_root: args.proc_root.clone(),
        events: args.events.clone(),
        definitions_dir: args
            .definitions_dir
            .clone()
            .unwrap_or(defaults.definitions_dir),
        config_dir: args.config_dir.clone().unwrap_or(defaults.config_dir),
        state_dir: args.state_dir.clone().unwrap_or(defaults.state_dir),
        vmm_binary: None,
        sim_control: None,
        metrics_listen: args.metrics_listen.clone(),
        mdevctl_lib_dir: args.mdevctl_lib_dir.clone(),
        modprobe_dir: args
            .modprobe_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/modprobe.d")),
    };
    let Some(profiles) = args.simulate.clone() else {
        if !args.private_bus {
            return daemon::run(opts, |_| {}, shutdown_signal())
                .await
                .map_err(|e| e.to_string());
        }
        let (bus, polkit) = private_bus(args.no_polkit)?;
        let address = bus.address().to_owned();
        opts.bus = BusChoice::Address(address.clone());
        let polkit_state = if polkit.is_some() { "polkitd" } else { "none" };
        let ready = move |_: &zbus::Connection| {
            println!("VGPUD_BUS_ADDRESS={address}");
            println!("VGPUD_POLKIT={polkit_state}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        };
        let result = daemon::run(opts, ready, shutdown_signal()).await;
        drop(polkit);
        drop(bus);
        return result.map_err(|e| daemon::chain(&e));
    };

    // --simulate: everything lives in one temporary directory and goes away with it.
    let work = tempfile::Builder::new()
        .prefix("vgpud-simulate.")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let profiles = if profiles.is_empty() {
        DEFAULT_SIMULATED_HOST
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        profiles
    };
    let sim_opts = SimOptions {
        mountpoint: work.path().join("sys"),
        profiles: profiles.clone(),
        ..SimOptions::default()
    };
    let sim = tokio::task::spawn_blocking(move || Simulator::start(&sim_opts))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (bus, polkit) = match bus_choice(&args) {
        Some(b) => ((b, None), None),
        None => {
            let (bus, polkit) = private_bus(args.no_polkit)?;
            (
                (BusChoice::Address(bus.address().to_owned()), Some(bus)),
                polkit,
            )
        }
    };
    opts.definitions_dir = args
        .definitions_dir
        .clone()
        .unwrap_or_else(|| work.path().join("mdevctl.d"));
    opts.config_dir = args
        .config_dir
        .clone()
        .unwrap_or_else(|| work.path().join("config"));
    opts.state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| work.path().join("state"));
    // A simulated host never writes the real /etc/modprobe.d.
    opts.modprobe_dir = args
        .modprobe_dir
        .clone()
        .unwrap_or_else(|| work.path().join("modprobe.d"));
    opts.bus = bus.0.clone();
    opts.sysfs = sim.mountpoint().to_owned();
    opts.dev = sim.dev_dir().to_owned();
    opts.sim_control = Some(sim.control_socket());
    opts.events = EventSpec::Sim(sim.uevent_socket());
    let address = match &opts.bus {
        BusChoice::Address(a) => a.clone(),
        BusChoice::Session => std::env::var("DBUS_SESSION_BUS_ADDRESS").unwrap_or_default(),
        BusChoice::System => "unix:path=/run/dbus/system_bus_socket".to_owned(),
    };
    let mount = sim.mountpoint().display().to_string();
    let defs = opts.definitions_dir.display().to_string();
    let config = opts.config_dir.display().to_string();
    let polkit_state = if polkit.is_some() { "polkitd" } else { "none" };
    let ctl = sim.mountpoint().display().to_string();
    let ready = move |_: &zbus::Connection| {
        println!(
            "vgpud is running on a simulated host ({})",
            profiles.join(", ")
        );
        println!("VGPUD_BUS_ADDRESS={address}");
        println!("VGPUD_SIM_ROOT={mount}");
        println!("VGPUD_DEFINITIONS_DIR={defs}");
        println!("VGPUD_CONFIG_DIR={config}");
        println!("VGPUD_POLKIT={polkit_state}");
        println!();
        println!("Try, in another terminal:");
        println!("  export ADDR='{address}'");
        println!("  busctl --address=$ADDR tree org.vgpud");
        println!("  busctl --address=$ADDR introspect org.vgpud /org/vgpud");
        println!("  busctl --address=$ADDR call org.vgpud /org/vgpud org.vgpud1.Manager CreateDevice 'sa{{sv}}' 'GRID T4-2Q' 0");
        println!("  busctl --address=$ADDR monitor org.vgpud");
        println!("  ls {mount}/bus/mdev/devices");
        println!("  vgpud-sim ctl {ctl} unplug 0000:20:00.0");
        println!();
        println!("Ctrl-C stops vgpud, unmounts the simulator and stops the private bus.");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    };
    let result = daemon::run(opts, ready, shutdown_signal()).await;
    drop(polkit);
    drop(bus);
    tokio::task::spawn_blocking(move || sim.stop())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("unmounting the simulator failed: {e}"))?;
    drop(work);
    result.map_err(|e| daemon::chain(&e))
}
