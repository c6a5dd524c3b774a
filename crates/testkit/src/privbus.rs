//! A private dbus-daemon for `vgpud --simulate` and the tests: a bus of its own in a fresh
//! directory, so nothing touches (or needs) the host's system bus. The system flavour reads bus
//! policy files from a directory, as /usr/share/dbus-1/system.d works on a real host.

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How long dbus-daemon may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Which bus to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    /// Like the system bus, but permissive: anyone may connect, send and receive; only root
    /// may own names (polkitd running as its own user needs polkit's policy file dropped in).
    /// Authorization is then entirely the services' own (polkit), which is what the tests of
    /// vgpud's authorization want to see.
    System,
    /// The distribution's system-bus default: method calls and name ownership are denied
    /// unless a policy file in the policy directory allows them. For testing policy files.
    SystemStrict,
    /// A session bus that allows everything.
    Session,
}

/// A running private dbus-daemon; dropping it kills the daemon and removes its directory.
pub struct PrivateBus {
    address: String,
    child: Child,
    dir: PathBuf,
    /// Kept open so the daemon never writes into a closed pipe.
    _stdout: Option<ChildStdout>,
}

impl PrivateBus {
    /// Starts a bus of this kind. Blocks until the daemon prints its address (milliseconds;
    /// at most ten seconds), so from async code call it before serving or in spawn_blocking.
    pub fn start(kind: BusKind) -> io::Result<Self> {
        Self::start_with_policy(kind, &[])
    }

    /// Starts a bus that also loads these policy files, given as (file name, contents) — e.g.
    /// ("org.vgpud.conf", include_str!(".../dbus/org.vgpud.conf")) or polkit's
    /// org.freedesktop.PolicyKit1.conf — in this order, after its default policy. Each is
    /// named in the config by itself, so dbus-daemon refuses to start if one is malformed; the
    /// error carries its complaint.
    pub fn start_with_policy(kind: BusKind, policies: &[(&str, &str)]) -> io::Result<Self> {
        let dir = make_private_dir()?;
        let policy_dir = dir.join("policy.d");
        let prepared = prepare(kind, &dir, &policy_dir, policies);
        let config = match prepared {
            Ok(config) => config,
            Err(e) => {
                remove_dir(&dir);
                return Err(e);
            }
        };
        let spawned = fs::File::create(dir.join("dbus-daemon.log")).and_then(|log| {
            Command::new("dbus-daemon")
                .arg(format!("--config-file={}", config.display()))
                .arg("--nofork")
                .arg("--print-address=1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                remove_dir(&dir);
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot run dbus-daemon (is it installed?): {e}"),
                ));
            }
        };
        let stdout = child.stdout.take();
        let mut bus = Self {
            address: String::new(),
            child,
            dir,
            _stdout: None,
        };
        let Some(mut stdout) = stdout else {
            return Err(io::Error::other(
                "dbus-daemon's standard output was not piped",
            ));
        };
        match read_line(&mut stdout, Instant::now() + START_TIMEOUT) {
            Ok(Some(address)) if !address.is_empty() => {
                bus.address = address;
                bus._stdout = Some(stdout);
                Ok(bus)
            }
            Ok(_) => {
                // EOF: the daemon exited; its reason is in the log.
                let _ = bus.child.wait();
                let log = fs::read_to_string(bus.dir.join("dbus-daemon.log")).unwrap_or_default();
                Err(io::Error::other(format!(
                    "dbus-daemon refused to start: {}",
                    log.trim()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// The address to connect to (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A directory for policy files added while the bus runs. dbus-daemon notices new files by
    /// itself; a caller that must be sure they apply calls org.freedesktop.DBus.ReloadConfig.
    /// Unlike the files given to `start_with_policy`, a malformed file here is only skipped
    /// (with a warning in the daemon's log).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policy.d")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        // The daemon may have died already; then kill fails and wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_dir(&self.dir);
    }
}

/// Writes the config and the policy files; returns the config file's path.
fn prepare(
    kind: BusKind,
    dir: &Path,
    policy_dir: &Path,
    policies: &[(&str, &str)],
) -> io::Result<PathBuf> {
    fs::DirBuilder::new().mode(0o755).create(policy_dir)?;
    // Named with <include>, not dropped into the <includedir>: dbus-daemon skips a malformed
    // file in an included directory with a warning, but refuses to start on an included file.
    let fixed_dir = dir.join("policy.fixed");
    fs::DirBuilder::new().mode(0o755).create(&fixed_dir)?;
    let mut includes = Vec::with_capacity(policies.len());
    for (i, (name, text)) in policies.iter().enumerate() {
        if name.is_empty() || name.contains('/') || *name == "." || *name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bus policy name {name:?} is not a file name"),
            ));
        }
        // Numbered so the files keep the caller's order even when two share a name.
        let file = fixed_dir.join(format!("{i:02}-{name}"));
        fs::write(&file, text)?;
        includes.push(file);
    }
    let socket = dir.join(match kind {
        BusKind::System | BusKind::SystemStrict => "system_bus_socket",
        BusKind::Session => "session_bus_socket",
    });
    let config = dir.join("bus.conf");
    fs::write(&config, config_text(kind, policy_dir, &socket, &includes))?;
    Ok(config)
}

/// A fresh directory under the temporary directory, traversable by every user (an
/// unprivileged test client and polkitd must reach the socket).
fn make_private_dir() -> io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("vgpud-bus-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {
                // The umask may have narrowed the mode.
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                return Ok(dir);
            }
            // Left over by an earlier process with the same pid: take the next name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => continue,
            Err(e) => return Err(e),
        }
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(
            "cannot remove the private bus directory {}: {e}",
            dir.display()
        );
    }
}

/// Reads up to the first newline, waiting at most until `deadline`. `None` on EOF.
fn read_line(stdout: &mut ChildStdout, deadline: Instant) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "dbus-daemon did not print its address in time",
            ));
        }
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        // poll said readable (or hung up): this read does not block.
        let n = stdout.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return String::from_utf8(line)
                .map(Some)
                .map_err(|_| io::Error::other("dbus-daemon printed an address that is not UTF-8"));
        }
    }
}

/// Escapes a value for a D-Bus address (`unix:path=<value>`): bytes outside the optionally
/// escaped set become %XX.
fn address_value(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_/.\\*".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// Escapes text for an XML element's content.
fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn config_text(kind: BusKind, policy_dir: &Path, socket: &Path, includes: &[PathBuf]) -> String {
    let (bus_type, policy) = match kind {
        BusKind::System => ("system", SYSTEM_POLICY),
        BusKind::SystemStrict => ("system", STRICT_SYSTEM_POLICY),
        BusKind::Session => ("session", SESSION_POLICY),
    };
    let listen = xml_text(&format!("unix:path={}", address_value(socket)));
    let mut included = format!(
        "  <includedir>{}</includedir>",
        xml_text(&policy_dir.to_string_lossy())
    );
    for file in includes {
        included.push_str(&format!(
            "\n  <include>{}</include>",
            xml_text(&file.to_string_lossy())
        ));
    }
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- A private {bus_type} bus started by vgpud (privbus.rs). -->
<busconfig>
  <type>{bus_type}</type>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
{policy}
{included}
</busconfig>
"#
    )
}

/// The permissive system-bus config of `BusKind::System`. Policy files in `policy_dir` come
/// after the defaults, so their `deny` rules (e.g. "only root owns org.vgpud") still apply.
pub fn system_config(policy_dir: &Path, socket: &Path) -> String {
    config_text(BusKind::System, policy_dir, socket, &[])
}

const SYSTEM_POLICY: &str = r#"  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <deny own="*"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
  </policy>"#;

/// The config of `BusKind::SystemStrict`: the default policy of the distribution's
/// system.conf (method calls to services and name ownership denied, signals and replies
/// allowed, the bus driver's own interfaces allowed).
pub fn strict_system_config(policy_dir: &Path, socket: &Path) -> String {
    config_text(BusKind::SystemStrict, policy_dir, socket, &[])
}

const STRICT_SYSTEM_POLICY: &str = r#"  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>"#;

/// The config of `BusKind::Session`: everyone may do everything.
pub fn session_config(policy_dir: &Path, socket: &Path) -> String {
    config_text(BusKind::Session, policy_dir, socket, &[])
}

const SESSION_POLICY: &str = r#"  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"#;

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(20);

    const OUR_POLICY: (&str, &str) = (
        "org.vgpud.conf",
        include_str!("../../../dbus/org.vgpud.conf"),
    );

    async fn connect(bus: &PrivateBus) -> zbus::Connection {
        zbus::connection::Builder::address(bus.address())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    async fn list_names(conn: &zbus::Connection) -> Vec<String> {
        let proxy = zbus::fdo::DBusProxy::new(conn).await.unwrap();
        let names = proxy.list_names().await.unwrap();
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Awaits `f`, failing the test after TIMEOUT instead of hanging it.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(TIMEOUT, f).await.unwrap()
    }

    /// Starts a bus of `kind` and asserts that it lists the bus itself among its names.
    async fn assert_answers_list_names(kind: BusKind) -> PrivateBus {
        let bus = PrivateBus::start(kind).unwrap();
        let names = within(async { list_names(&connect(&bus).await).await }).await;
        assert!(
            names.iter().any(|n| n == "org.freedesktop.DBus"),
            "{names:?}"
        );
        bus
    }

    /// Runs a command as user nobody (uid 65534) and returns (success, stdout + stderr).
    async fn as_nobody(program: &str, args: &[&str]) -> (bool, String) {
        let out = tokio::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program)
            .args(args)
            .output()
            .await
            .expect("setpriv runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `dbus-send` as nobody: a method call on the private bus.
    async fn call_as_nobody(
        bus: &PrivateBus,
        dest: &str,
        path: &str,
        method: &str,
        args: &[&str],
    ) -> (bool, String) {
        let addr = format!("--bus={}", bus.address());
        let dest = format!("--dest={dest}");
        let mut all = vec![addr.as_str(), "--print-reply", dest.as_str(), path, method];
        all.extend_from_slice(args);
        as_nobody("dbus-send", &all).await
    }

    // --- config text -------------------------------------------------------------------------

    #[test]
    fn system_config_listens_and_includes_the_policy_dir() {
        let text = system_config(
            Path::new("/tmp/b/policy.d"),
            Path::new("/tmp/b/system_bus_socket"),
        );
        assert!(text.contains("<type>system</type>"), "{text}");
        assert!(
            text.contains("<listen>unix:path=/tmp/b/system_bus_socket</listen>"),
            "{text}"
        );
        assert!(text.contains("<auth>EXTERNAL</auth>"), "{text}");
        assert!(
            text.contains("<includedir>/tmp/b/policy.d</includedir>"),
            "{text}"
        );
        assert!(text.contains(r#"<policy user="root">"#), "{text}");
        // Policy files come after the defaults so that they can narrow them.
        assert!(
            text.find("<includedir>") > text.rfind("</policy>"),
            "{text}"
        );
    }

    #[test]
    fn config_escapes_odd_paths() {
        let text = system_config(Path::new("/tmp/a&b/<p>"), Path::new("/tmp/a b,c=d/sock"));
        assert!(
            text.contains("<listen>unix:path=/tmp/a%20b%2cc%3dd/sock</listen>"),
            "{text}"
        );
        assert!(
            text.contains("<includedir>/tmp/a&amp;b/&lt;p&gt;</includedir>"),
            "{text}"
        );
    }

    #[test]
    fn session_config_is_a_session_bus() {
        let text = session_config(Path::new("/p"), Path::new("/s"));
        assert!(text.contains("<type>session</type>"), "{text}");
        assert!(text.contains(r#"<allow own="*"/>"#), "{text}");
    }

    // --- a running daemon --------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn system_bus_answers_list_names() {
        let bus = assert_answers_list_names(BusKind::System).await;
        assert!(bus.address().starts_with("unix:path="), "{}", bus.address());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_bus_answers_list_names() {
        assert_answers_list_names(BusKind::Session).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busctl_lists_the_private_bus() {
        let bus = PrivateBus::start(BusKind::System).unwrap();
        let out = within(
            tokio::process::Command::new("busctl")
                .arg(format!("--address={}", bus.address()))
                .args(["list", "--no-pager"])
                .output(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("org.freedesktop.DBus"), "{text}");
    }

    #[test]
    fn drop_stops_the_daemon_and_removes_its_directory() {
        let bus = PrivateBus::start(BusKind::Session).unwrap();
        let dir = bus.dir.clone();
        let pid = bus.pid();
        assert!(bus.policy_dir().is_dir());
        drop(bus);
        assert!(!dir.exists(), "{}", dir.display());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "dbus-daemon {pid} still runs"
        );
    }

    #[test]
    fn a_malformed_policy_file_stops_the_start() {
        let broken = (
            "broken.conf",
            "<busconfig><policy context=\"default\"><allow own=",
        );
        let err = match PrivateBus::start_with_policy(BusKind::System, &[broken]) {
            Ok(_) => panic!("dbus-daemon accepted a broken policy"),
            Err(e) => e,
        };
        assert!(
            err.to_string().starts_with("dbus-daemon refused to start"),
            "{err}"
        );
    }

    #[test]
    fn a_policy_name_with_a_slash_is_refused() {
        let err = match PrivateBus::start_with_policy(BusKind::System, &[("../x.conf", "")]) {
            Ok(_) => panic!("accepted a policy name with a slash"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    // --- dbus/org.vgpud.conf -----------------------------------------------------------------

    #[test]
    fn our_bus_policy_is_accepted() {
        PrivateBus::start_with_policy(BusKind::SystemStrict, &[OUR_POLICY]).unwrap();
        PrivateBus::start_with_policy(BusKind::System, &[OUR_POLICY]).unwrap();
    }

    /// The daemon stand-in: root owns org.vgpud and serves one method of org.vgpud1.Manager.
    struct Manager;

    #[zbus::interface(name = "org.vgpud1.Manager")]
    impl Manager {
        fn ping(&self) -> String {
            "pong".into()
        }
    }

    async fn serve_as_root(bus: &PrivateBus) -> zbus::Connection {
        let conn = connect(bus).await;
        conn.object_server()
            .at("/org/vgpud", Manager)
            .await
            .unwrap();
        conn.request_name("org.vgpud").await.unwrap();
        conn
    }

    /// A strict system bus with our policy on which root owns org.vgpud; the connection
    /// keeps the name.
    async fn our_bus_served_as_root() -> (PrivateBus, zbus::Connection) {
        let bus = PrivateBus::start_with_policy(BusKind::SystemStrict, &[OUR_POLICY]).unwrap();
        let root = within(serve_as_root(&bus)).await;
        (bus, root)
    }

    /// `call_as_nobody` on org.vgpud's object, within TIMEOUT.
    async fn call_ours_as_nobody(bus: &PrivateBus, method: &str) -> (bool, String) {
        within(call_as_nobody(bus, "org.vgpud", "/org/vgpud", method, &[])).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_root_may_own_our_name() {
        let bus = PrivateBus::start_with_policy(BusKind::SystemStrict, &[OUR_POLICY]).unwrap();
        let (ok, text) = within(call_as_nobody(
            &bus,
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            &["string:org.vgpud", "uint32:0"],
        ))
        .await;
        assert!(!ok && text.contains("AccessDenied"), "{text}");
        let _root = within(serve_as_root(&bus)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn anyone_may_call_our_interfaces() {
        let (bus, _root) = our_bus_served_as_root().await;
        for method in ["org.vgpud1.Manager.Ping", "org.freedesktop.DBus.Peer.Ping"] {
            let (ok, text) = call_ours_as_nobody(&bus, method).await;
            assert!(ok, "{method}: {text}");
        }
        let (ok, text) =
            call_ours_as_nobody(&bus, "org.freedesktop.DBus.Introspectable.Introspect").await;
        assert!(ok && text.contains("org.vgpud1.Manager"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_interfaces_of_our_name_are_closed() {
        let (bus, _root) = our_bus_served_as_root().await;
        let (ok, text) = call_ours_as_nobody(&bus, "org.vgpud1.Secret.Ping").await;
        assert!(!ok && text.contains("AccessDenied"), "{text}");
    }
}
