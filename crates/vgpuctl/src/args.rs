//! vgpuctl's command line, defined once: the parser, `--help`, the shell completions and the
//! man pages are all generated from these types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use vgpud_api::BusChoice;

/// Text shown after `--help` and in the man page: exit codes and the JSON schema.
pub const REFERENCE: &str = include_str!("reference.txt");

const HOOK_HELP: &str = "\
Installed as /etc/libvirt/hooks/qemu.d/vgpud (a symlink to vgpuctl: invoked from a directory \
named qemu.d, vgpuctl acts as this command). libvirt runs it as \
`<hook> <domain> <operation> <sub-operation> <extra>` with the domain XML on stdin.

prepare begin: every <hostdev mode='subsystem' type='mdev'> UUID of the domain is made to \
exist: an active device is used as it is, a defined one is started, any other is created from \
the domain's metadata:
  <metadata>
    <vgpud:devices xmlns:vgpud=\"https://vgpud.org/xmlns/libvirt/1\">
      <vgpud:device uuid=\"UUID\" type=\"TYPE ID OR NAME\" parent=\"OPTIONAL PARENT\"/>
    </vgpud:devices>
  </metadata>
If any vGPU cannot be had, what this call created or started is undone, the reason is printed \
on stderr and the exit code is not 0, which makes libvirt abort the start.

release end: the devices the hook created for the domain are removed (definitions, and devices \
made persistent meanwhile, stay).

Every other operation exits 0 at once, without reading stdin or touching the bus. The devices \
the hook created are recorded in STATE_DIR/<domain>.json.";

#[derive(Parser, Debug)]
#[command(
    name = "vgpuctl",
    version,
    about = "Manage vGPUs and other mediated devices through vgpud",
    after_long_help = REFERENCE,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Print JSON for scripts instead of tables (schema below, under JSON OUTPUT).
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up when vgpud has not answered within SECONDS (default 30; 20 for libvirt-hook).
    #[arg(long, global = true, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct BusArgs {
    /// Talk to vgpud on the system bus (the default).
    #[arg(long, global = true, conflicts_with_all = ["session", "address"])]
    pub system: bool,
    /// Talk to vgpud on the session bus.
    #[arg(long, global = true, conflicts_with = "address")]
    pub session: bool,
    /// Talk to vgpud on the bus at this D-Bus address (as printed by `vgpud --simulate`).
    #[arg(long, global = true, value_name = "ADDR")]
    pub address: Option<String>,
}

impl BusArgs {
    pub fn choice(&self) -> BusChoice {
        match (&self.address, self.session) {
            (Some(a), _) => BusChoice::Address(a.clone()),
            (None, true) => BusChoice::Session,
            (None, false) => BusChoice::System,
        }
    }
}

/// The bus in words, for messages.
pub fn describe(bus: &BusChoice) -> String {
    match bus {
        BusChoice::System => "the system bus".to_owned(),
        BusChoice::Session => "the session bus".to_owned(),
        BusChoice::Address(a) => format!("the bus at {a}"),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List parent devices (GPUs and other devices that offer mdev types).
    Parents,
    /// List device types with their free capacity.
    Types {
        /// Only the types of this parent (e.g. 0000:3b:00.0).
        #[arg(long, value_name = "PARENT")]
        parent: Option<String>,
    },
    /// How many more devices of each type you could create now, and where (your policy
    /// limits, reservations, shared pools and one-type GPUs counted).
    Capacity {
        /// Only this type (an id such as nvidia-231, or a name such as "GRID T4-2Q").
        #[arg(long = "type", value_name = "TYPE")]
        type_spec: Option<String>,
        /// Only this parent.
        #[arg(long, value_name = "PARENT")]
        parent: Option<String>,
        /// Only parents on this NUMA node.
        #[arg(long, value_name = "NODE")]
        numa_node: Option<i32>,
    },
    /// What the ensure rules would create on this host now, and what stands in the way,
    /// without doing anything.
    Plan,
    /// Make a parent serve TYPE: devices of other types on it are in the way (a GPU that runs
    /// one type at a time); --drain removes them first. Then creates --count devices of TYPE.
    Reshape {
        /// The parent (e.g. 0000:3b:00.0).
        parent: String,
        /// The type to serve, by id or name.
        #[arg(value_name = "TYPE")]
        type_spec: String,
        /// How many devices of TYPE to create there.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Remove the devices of other types in the way (never one a guest uses).
        #[arg(long)]
        drain: bool,
    },
    /// List live devices; with --defined, the persistent definitions (as mdevctl does).
    List {
        /// List persistent definitions, live or not.
        #[arg(long)]
        defined: bool,
    },
    /// Create a device of a type given by id (nvidia-231) or name ("GRID T4-2Q").
    Create {
        #[arg(value_name = "TYPE")]
        type_spec: String,
        #[command(flatten)]
        spec: DeviceSpec,
        /// Also store a persistent definition (in mdevctl's layout).
        #[arg(long)]
        define: bool,
    },
    /// Remove a live device (its definition, if any, stays).
    Remove {
        uuid: String,
        /// Wait for a process holding the device to let go (up to 3/4 of --timeout) instead of
        /// failing as busy.
        #[arg(long)]
        force: bool,
    },
    /// Define a persistent device: `define TYPE --parent P`, or `define UUID` for a live device.
    Define {
        /// A type id or name (with --parent), or the UUID of a live device.
        #[arg(value_name = "TYPE|UUID")]
        target: String,
        #[command(flatten)]
        spec: DeviceSpec,
    },
    /// Delete a persistent definition (a live device stays).
    Undefine { uuid: String },
    /// Create the device of a definition.
    Start { uuid: String },
    /// Remove the live device of a definition (the definition stays).
    Stop {
        uuid: String,
        /// Wait for a process holding the device to let go (up to 3/4 of --timeout) instead of
        /// failing as busy.
        #[arg(long)]
        force: bool,
    },
    /// Start a definition when its parent appears (on), or only on request (off).
    Autostart { uuid: String, state: OnOff },
    /// Change a device's vendor attributes (e.g. nvidia/vgpu_params) on the running device
    /// (--live: all or nothing), in its definition (--defined), or both.
    Modify {
        uuid: String,
        /// An attribute to set, in order; may be repeated.
        #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr, required = true)]
        attrs: Vec<(String, String)>,
        /// Change the running device.
        #[arg(long)]
        live: bool,
        /// Change its persistent definition.
        #[arg(long)]
        defined: bool,
    },
    /// Print vgpud's events (objects added, removed, changed) until interrupted.
    Monitor,
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Make vgpud re-read its policy files and definitions.
    Reload,
    /// Launch a KVM guest with the vGPU(s) attached and follow its serial console until it
    /// ends; `--payload pci-probe` answers "does this vGPU reach a guest?" without an OS image.
    Launch {
        #[arg(required = true, value_name = "UUID")]
        uuids: Vec<String>,
        /// A built-in payload (pci-probe, loop, halt) or a flat binary file.
        #[arg(long, conflicts_with = "kernel")]
        payload: Option<String>,
        /// A Linux kernel to boot (bzImage or ELF vmlinux; a path the daemon can read).
        #[arg(long)]
        kernel: Option<String>,
        /// An initial ramdisk for --kernel.
        #[arg(long, requires = "kernel")]
        initrd: Option<String>,
        /// The kernel command line (default: console=ttyS0).
        #[arg(long, requires = "kernel")]
        cmdline: Option<String>,
        #[arg(long)]
        memory_mib: Option<u32>,
        #[arg(long)]
        vcpus: Option<u32>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff); with --dir, write one page per command into DIR.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// libvirt's QEMU hook: make a domain's vGPUs exist before it starts, remove them after.
    #[command(long_about = HOOK_HELP)]
    LibvirtHook(HookArgs),
}

/// Where and how a device is made.
#[derive(Args, Debug, Clone, Default)]
pub struct DeviceSpec {
    /// The parent device (default: vgpud's placement policy picks one).
    #[arg(long, value_name = "PARENT")]
    pub parent: Option<String>,
    /// The new device's UUID (default: a random one).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Start the device whenever its parent appears (implies a persistent definition).
    #[arg(long)]
    pub auto: bool,
    /// A vendor attribute written after creation, in order; may be repeated.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
    pub attrs: Vec<(String, String)>,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate policy files offline; prints file:line:column: message for every problem.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args, Debug, Clone)]
pub struct HookArgs {
    /// Where the hook records which devices it created for each domain.
    #[arg(long, value_name = "DIR", default_value = "/run/vgpud/libvirt-hook")]
    pub state_dir: PathBuf,
    /// The domain's name.
    pub domain: String,
    /// libvirt's operation: prepare, start, started, stopped, release, migrate, ...
    pub operation: String,
    /// begin or end.
    pub sub_operation: String,
    /// libvirt's extra argument ("-" mostly); ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub extra: Vec<String>,
}

fn parse_attr(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, not {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attrs_split_at_the_first_equals_sign() {
        assert_eq!(parse_attr("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_attr("a="), Ok(("a".into(), String::new())));
        assert!(parse_attr("=b").is_err());
        assert!(parse_attr("ab").is_err());
    }

    #[test]
    fn bus_defaults_to_system() {
        let cli = Cli::try_parse_from(["vgpuctl", "list"]).unwrap();
        assert_eq!(cli.bus.choice(), BusChoice::System);
        let cli = Cli::try_parse_from(["vgpuctl", "list", "--address", "unix:path=/x"]).unwrap();
        assert_eq!(cli.bus.choice(), BusChoice::Address("unix:path=/x".into()));
        assert!(Cli::try_parse_from(["vgpuctl", "--session", "--address", "a", "list"]).is_err());
    }

    #[test]
    fn create_takes_repeated_attrs_in_order() {
        let cli = Cli::try_parse_from([
            "vgpuctl", "create", "mtty-1", "--attr", "b=1", "--attr", "a=2", "--define",
        ])
        .unwrap();
        let Command::Create { spec, define, .. } = cli.command else {
            panic!("not create");
        };
        assert!(define);
        assert_eq!(
            spec.attrs,
            vec![("b".into(), "1".into()), ("a".into(), "2".into())]
        );
    }

    #[test]
    fn hook_takes_libvirt_arguments() {
        let cli = Cli::try_parse_from([
            "vgpuctl",
            "libvirt-hook",
            "--",
            "-odd-name",
            "prepare",
            "begin",
            "-",
        ])
        .unwrap();
        let Command::LibvirtHook(h) = cli.command else {
            panic!("not the hook");
        };
        assert_eq!(h.domain, "-odd-name");
        assert_eq!(h.extra, vec!["-".to_owned()]);
    }
}
