//! The simulator's fidelity, judged by the real kernel: `vgpud-prove abi` runs the same
//! kernel-ABI scenarios (the tree, every create/remove errno, the sample drivers' pools, a
//! remove blocked by a VFIO holder, uevents field by field on create, remove, module load and
//! unload) on Debian's kernel with the real mtty, mdpy and mbochs, and on vgpud-sim with the
//! same three profiles. Every scenario must read the same on both.

#[path = "common/real_kernel.rs"]
mod real_kernel;
#[path = "common/sim.rs"]
mod sim_fixture;

use std::collections::BTreeMap;
use std::process::Command;

use sim_fixture::{run_bounded, SimProcess};

type Record = BTreeMap<String, Vec<String>>;

fn parse(json: &str, whose: &str) -> Record {
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{whose}'s record is not JSON ({e}):\n{json}"))
}

fn on_the_real_kernel() -> Record {
    let run = real_kernel::run(
        r#"
insmod mtty && insmod mdpy && insmod mbochs || exit 3
"$VGPUD_PROVE" abi --sysfs /sys --modules "$RK/modules" > "$SCRATCH/kernel.json"
"#,
    );
    run.assert_ok();
    parse(&run.file("kernel.json"), "the real kernel")
}

fn on_the_simulator() -> Record {
    let sim = SimProcess::start(&["-p", "mtty", "-p", "mdpy", "-p", "mbochs"]);
    let run_dir = sim.banner_value("control");
    let run_dir = std::path::Path::new(&run_dir)
        .parent()
        .expect("run dir")
        .to_path_buf();
    let mut cmd = Command::new(real_kernel::VGPUD_PROVE);
    cmd.arg("abi")
        .arg("--sysfs")
        .arg(&sim.mountpoint)
        .arg("--sim-run-dir")
        .arg(&run_dir);
    let out = run_bounded(cmd);
    assert!(
        out.status.success(),
        "vgpud-prove abi on the simulator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record = parse(&String::from_utf8_lossy(&out.stdout), "the simulator");
    sim.stop();
    record
}

/// The table the README's fidelity section shows: one row per scenario.
fn table(sim: &Record, kernel: &Record) -> String {
    let mut out = String::from("| scenario | simulator | real kernel |\n|---|---|---|\n");
    for (scenario, lines) in kernel {
        let verdict = if sim.get(scenario) == Some(lines) {
            "same"
        } else {
            "DIFFERS"
        };
        let shown = lines.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
        out.push_str(&format!(
            "| {scenario} | {verdict} | {} |\n",
            shown.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn every_scenario_reads_the_same_on_the_simulator_and_the_real_kernel() {
    let kernel = on_the_real_kernel();
    let sim = on_the_simulator();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-kernel-tests");
    std::fs::write(dir.join("fidelity.md"), table(&sim, &kernel)).expect("write fidelity.md");

    // The record is about the real drivers, not an empty tree: facts seen on the kernel.
    assert!(
        kernel.len() >= 30,
        "only {} scenarios ran: {kernel:#?}",
        kernel.len()
    );
    assert_eq!(kernel["capacity.mtty"][0], "mtty-1: 24 made, then ENOSPC");
    assert_eq!(kernel["capacity.mdpy"][0], "mdpy-vga: 4 made, then EUSERS");
    assert_eq!(kernel["create.duplicate-upper-case"][0], "EEXIST");
    assert_eq!(kernel["remove.held"][0], "remove blocks while held");
    assert!(
        kernel["events.create"]
            .iter()
            .any(|l| l.starts_with("bind mdev ")),
        "{:?}",
        kernel["events.create"]
    );

    let mut differences = Vec::new();
    for scenario in kernel
        .keys()
        .chain(sim.keys().filter(|k| !kernel.contains_key(*k)))
    {
        let (s, k) = (sim.get(scenario), kernel.get(scenario));
        if s != k {
            differences.push(format!(
                "{scenario}:\n  simulator:   {s:?}\n  real kernel: {k:?}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "the simulator differs from the real kernel in {} scenarios:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
