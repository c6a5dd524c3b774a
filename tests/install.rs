//! `make install` / `make uninstall` into a scratch DESTDIR with the debug binaries cargo
//! already built, and well-formedness of the XML files that get installed.

#[path = "common/daemon.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// VGPUD and VGPUD_SIM are named so cargo builds them before this test; the Makefile installs
// them from vgpuctl's dir.
use common::{wait_bounded, VGPUCTL, VGPUD, VGPUD_SIM};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs make with `args` in the source tree, at most 120 s; returns its combined output.
fn make(args: &[String]) -> (bool, String) {
    let bindir = Path::new(VGPUCTL)
        .parent()
        .expect("the binaries' directory");
    for bin in [VGPUD, VGPUD_SIM] {
        assert_eq!(
            Path::new(bin).parent(),
            Some(bindir),
            "{bin} is built beside vgpuctl"
        );
    }
    let out_dir = tempfile::tempdir().expect("temp dir");
    let log = out_dir.path().join("make.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = Command::new("make")
        .arg("-C")
        .arg(ROOT)
        .arg(format!("BINDIR_SRC={}", bindir.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("make runs");
    let status = wait_bounded(
        &mut child,
        Duration::from_secs(120),
        &format!("make {args:?}"),
    );
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

fn make_ok(args: &[String]) {
    let (ok, log) = make(args);
    assert!(ok, "make {args:?} failed:\n{log}");
}

fn vars(dest: &Path, prefix: &str, gen: &Path) -> Vec<String> {
    vec![
        format!("DESTDIR={}", dest.display()),
        format!("PREFIX={prefix}"),
        format!("GENDIR={}", gen.display()),
    ]
}

fn with(mut v: Vec<String>, target: &str) -> Vec<String> {
    v.insert(0, target.to_owned());
    v
}

/// Every file and symlink under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let path = e.path();
            let kind = std::fs::symlink_metadata(&path)
                .expect("metadata")
                .file_type();
            if kind.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).expect("under base");
                out.push(format!("/{}", rel.display()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("installed")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_puts_everything_in_place_and_uninstall_takes_it_all_away() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("root");
    let gen = tmp.path().join("gen");
    make_ok(&with(vars(&dest, "/usr", &gen), "install"));

    let installed = files(&dest);
    for expected in [
        "/usr/bin/vgpuctl",
        "/usr/bin/vgpud-sim",
        "/usr/sbin/vgpud",
        "/usr/share/dbus-1/system.d/org.vgpud.conf",
        "/usr/share/dbus-1/system-services/org.vgpud.service",
        "/usr/lib/systemd/system/vgpud.service",
        "/usr/lib/udev/rules.d/90-vgpud.rules",
        "/usr/share/polkit-1/actions/org.vgpud.policy",
        "/etc/vgpud/policy.d/00-default.toml",
        "/usr/share/doc/vgpud/examples/lab.toml",
        "/etc/libvirt/hooks/qemu.d/vgpud",
        "/usr/share/man/man1/vgpuctl.1",
        "/usr/share/man/man1/vgpuctl-create.1",
        "/usr/share/man/man1/vgpuctl-libvirt-hook.1",
        "/usr/share/bash-completion/completions/vgpuctl",
        "/usr/share/zsh/vendor-completions/_vgpuctl",
        "/usr/share/fish/vendor_completions.d/vgpuctl.fish",
    ] {
        assert!(
            installed.iter().any(|f| f == expected),
            "{expected} missing from {installed:#?}"
        );
    }
    for bin in ["usr/bin/vgpuctl", "usr/bin/vgpud-sim", "usr/sbin/vgpud"] {
        assert_eq!(mode(&dest.join(bin)), 0o755, "{bin}");
    }
    assert_eq!(
        mode(&dest.join("usr/lib/systemd/system/vgpud.service")),
        0o644
    );
    let hook = std::fs::read_link(dest.join("etc/libvirt/hooks/qemu.d/vgpud")).expect("a symlink");
    assert_eq!(hook, PathBuf::from("/usr/bin/vgpuctl"));
    let unit =
        std::fs::read_to_string(dest.join("usr/lib/systemd/system/vgpud.service")).expect("unit");
    assert!(
        unit.contains("ExecStart=/usr/sbin/vgpud --system"),
        "{unit}"
    );
    let shipped = std::fs::read(Path::new(ROOT).join("policies/default.toml")).expect("policy");
    assert_eq!(
        std::fs::read(dest.join("etc/vgpud/policy.d/00-default.toml")).expect("installed"),
        shipped
    );
    let examples = std::fs::read_dir(Path::new(ROOT).join("policies/examples"))
        .expect("examples")
        .count();
    assert_eq!(
        std::fs::read_dir(dest.join("usr/share/doc/vgpud/examples"))
            .expect("doc")
            .count(),
        examples
    );
    let man = std::fs::read_to_string(dest.join("usr/share/man/man1/vgpuctl.1")).expect("man");
    assert!(man.contains(".SH EXIT CODES"));

    make_ok(&with(vars(&dest, "/usr", &gen), "uninstall"));
    assert_eq!(
        files(&dest),
        Vec::<String>::new(),
        "uninstall leaves no file behind"
    );
    for dir in ["etc/vgpud", "etc/libvirt", "usr/share/doc/vgpud"] {
        assert!(!dest.join(dir).exists(), "{dir} is vgpud's own and goes");
    }
}

#[test]
fn install_keeps_an_edited_default_policy() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("root");
    let gen = tmp.path().join("gen");
    make_ok(&with(vars(&dest, "/usr", &gen), "install"));
    let policy = dest.join("etc/vgpud/policy.d/00-default.toml");
    std::fs::write(&policy, "# mine\n").expect("edit");
    make_ok(&with(vars(&dest, "/usr", &gen), "install"));
    assert_eq!(
        std::fs::read_to_string(&policy).expect("policy"),
        "# mine\n"
    );
    make_ok(&with(vars(&dest, "/usr", &gen), "uninstall"));
    assert_eq!(
        files(&dest),
        vec!["/etc/vgpud/policy.d/00-default.toml".to_owned()]
    );
}

#[test]
fn a_usr_local_install_points_bus_activation_and_the_unit_at_usr_local() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dest = tmp.path().join("root");
    let gen = tmp.path().join("gen");
    make_ok(&with(vars(&dest, "/usr/local", &gen), "install"));
    let service = std::fs::read_to_string(
        dest.join("usr/local/share/dbus-1/system-services/org.vgpud.service"),
    )
    .expect("service");
    assert!(
        service.contains("Exec=/usr/local/sbin/vgpud --system"),
        "{service}"
    );
    let unit = std::fs::read_to_string(dest.join("usr/local/lib/systemd/system/vgpud.service"))
        .expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/sbin/vgpud"), "{unit}");
    assert_eq!(
        std::fs::read_link(dest.join("etc/libvirt/hooks/qemu.d/vgpud")).expect("symlink"),
        PathBuf::from("/usr/local/bin/vgpuctl")
    );
    make_ok(&with(vars(&dest, "/usr/local", &gen), "uninstall"));
    assert_eq!(files(&dest), Vec::<String>::new());
}

#[test]
fn install_without_binaries_says_to_build_first() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut args = with(
        vars(&tmp.path().join("root"), "/usr", &tmp.path().join("gen")),
        "install",
    );
    args.push(format!(
        "BINDIR_SRC={}",
        tmp.path().join("nothing").display()
    ));
    let (ok, log) = make(&args);
    assert!(!ok);
    assert!(log.contains("run 'make' first"), "{log}");
    assert!(!tmp.path().join("root").exists(), "nothing was installed");
}

// --- XML well-formedness ---------------------------------------------------------------------

fn parse(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, options).map_err(|e| e.to_string())?;
    Ok(doc.root_element().tag_name().name().to_owned())
}

#[test]
fn the_introspection_files_are_well_formed() {
    let mut seen = 0;
    for e in std::fs::read_dir(Path::new(ROOT).join("dbus")).expect("dbus/") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "xml") {
            let root = parse(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(root, "node", "{}", path.display());
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(
                text.contains("<interface name=\"org.vgpud1."),
                "{}",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "Manager, Parent, MdevType and Device");
}

#[test]
fn the_bus_policy_and_polkit_actions_are_well_formed() {
    let conf = Path::new(ROOT).join("dbus/org.vgpud.conf");
    assert_eq!(
        parse(&conf).unwrap_or_else(|e| panic!("org.vgpud.conf: {e}")),
        "busconfig"
    );
    let policy = Path::new(ROOT).join("policies/org.vgpud.policy");
    assert_eq!(
        parse(&policy).unwrap_or_else(|e| panic!("org.vgpud.policy: {e}")),
        "policyconfig"
    );
    let text = std::fs::read_to_string(&policy).expect("read");
    let doc = roxmltree::Document::parse_with_options(
        &text,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("parses");
    let ids: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("action"))
        .filter_map(|n| n.attribute("id"))
        .collect();
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| id.starts_with("org.vgpud.")), "{ids:?}");
}

#[test]
fn the_example_domains_are_well_formed_except_the_broken_one() {
    for e in std::fs::read_dir(Path::new(ROOT).join("libvirt/examples")).expect("examples") {
        let path = e.expect("entry").path();
        let result = parse(&path);
        if path.file_name().is_some_and(|n| n == "malformed.xml") {
            assert!(result.is_err(), "malformed.xml parses");
        } else {
            assert_eq!(result.as_deref(), Ok("domain"), "{}", path.display());
        }
    }
}
