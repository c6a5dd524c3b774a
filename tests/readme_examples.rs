//! The README's command examples run against the simulator, so they cannot go stale: every
//! `busctl --address=$ADDR ...` line of its shell blocks (continuation lines joined) runs, in
//! order, against `vgpud --simulate` with the README's default host, and must succeed; the
//! simulator walkthrough runs against its own `vgpud-sim` mount.

#[path = "common/daemon.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, VGPUD_SIM};

/// Commands of the README's ```sh blocks, with `\` continuations joined and comments dropped.
fn shell_commands(readme: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = match line.find(" #") {
            Some(i) if !line[..i].contains('\'') => &line[..i],
            _ => line,
        };
        let code = code.trim_end();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head.trim());
            pending.push(' ');
            continue;
        }
        pending.push_str(code.trim_start());
        if !pending.trim().is_empty() && !pending.trim_start().starts_with('#') {
            out.push(pending.trim().to_owned());
        }
        pending.clear();
    }
    out
}

fn run(cmd: &str, env: &[(&str, String)], timeout_s: u32) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.arg(timeout_s.to_string()).args(["bash", "-c", cmd]);
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_busctl_examples_work() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples: Vec<String> = shell_commands(&readme)
        .into_iter()
        .filter(|c| c.starts_with("busctl --address=$ADDR"))
        .collect();
    assert!(
        examples.len() >= 5,
        "the README lost its busctl examples: {examples:?}"
    );
    let d = Daemon::start(&["nvidia-t4:2", "nvidia-a100", "nvidia-l40s", "mtty"]);
    // vgpuctl and the other binaries from this build, as `make install` would put them.
    let bin_dir = std::path::Path::new(VGPUD_SIM)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let path = format!("{bin_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let env = [("ADDR", d.address.clone()), ("PATH", path)];
    let examples: Vec<String> = examples
        .into_iter()
        .chain(
            shell_commands(&readme)
                .into_iter()
                .filter(|c| c.starts_with("vgpuctl ")),
        )
        .collect();
    for cmd in &examples {
        if cmd.contains(" monitor ") || cmd.ends_with(" monitor org.vgpud") {
            // Runs until interrupted: it must start and still be running after a second.
            let (ok, text) = run(cmd, &env, 1);
            assert!(!ok && !text.contains("Failed"), "{cmd}: {text}");
            continue;
        }
        let (ok, text) = run(cmd, &env, 30);
        assert!(ok, "README example failed: {cmd}\n{text}");
    }
}

#[test]
fn the_simulator_walkthrough_works() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let walk: Vec<String> = shell_commands(&readme)
        .into_iter()
        .filter(|c| c.contains("/tmp/s") && !c.ends_with('&') && !c.contains(" monitor"))
        .collect();
    assert!(
        walk.len() >= 6,
        "the README lost its simulator walkthrough: {walk:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("s");
    let mut sim = Command::new(VGPUD_SIM)
        .arg(&mount)
        .args(["--profile", "nvidia-t4:2", "--profile", "mtty"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !mount.join("class/mdev_bus").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "vgpud-sim did not mount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let path = format!(
        "{}:{}",
        std::path::Path::new(VGPUD_SIM).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("PATH", path)];
    for cmd in &walk {
        let cmd = cmd.replace("/tmp/s", &mount.display().to_string());
        // `hold UUID` names a placeholder: hold the device the walkthrough created instead.
        let cmd = cmd.replace(
            "hold UUID",
            &format!("hold $(ls {}/bus/mdev/devices | head -1)", mount.display()),
        );
        let (ok, text) = run(&cmd, &env, 30);
        assert!(ok, "README example failed: {cmd}\n{text}");
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sim.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = sim.wait();
}

#[test]
fn shell_commands_joins_continuations_and_drops_comments() {
    let text = "x\n```sh\nbusctl a \\\n    b # note\n# only a comment\nls\n```\n```\nnot sh\n```\n";
    assert_eq!(
        shell_commands(text),
        vec!["busctl a b".to_owned(), "ls".to_owned()]
    );
}
