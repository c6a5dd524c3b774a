//! vgpud-prove: runs the proof suite (load, faults, crash storms, hostile D-Bus input, and the
//! side-by-side benchmarks) against the real binaries on simulated hosts and prints a summary
//! table. `--quick` is the bounded run CI does. Exit status 1 when any check failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::prove::rig::{Bins, Rig};
use crate::prove::stats::mib;
use crate::prove::{clock_seed, compare, crash, dbus_fuzz, faults, fuzz, load, Row};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "vgpud-prove",
    about = "Prove vgpud under load, faults, crashes and hostile input, and benchmark it against raw sysfs and mdevctl"
)]
struct Args {
    /// The bounded run (a few minutes) that CI does.
    #[arg(long)]
    quick: bool,
    /// Seed for every random choice (printed at the start; give it back to replay a run).
    #[arg(long)]
    seed: Option<u64>,
    /// Run only these sections (load, faults, crash, fuzz, compare); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Crash rounds (default 10 with --quick, 120 otherwise).
    #[arg(long)]
    crash_rounds: Option<u32>,
    /// Hosts of the comparison, as GPUS or GPUS:ROUNDS (default 64:20 with --quick, 64:200 and
    /// 512:100 otherwise).
    #[arg(long, value_delimiter = ',', value_parser = parse_host)]
    compare_hosts: Vec<(u32, usize)>,
}

fn parse_host(s: &str) -> Result<(u32, usize), String> {
    let (gpus, rounds) = s.split_once(':').unwrap_or((s, "50"));
    let gpus = gpus
        .parse()
        .map_err(|_| format!("{gpus:?} is not a number of GPUs"))?;
    let rounds = rounds
        .parse()
        .map_err(|_| format!("{rounds:?} is not a number of rounds"))?;
    Ok((gpus, rounds))
}

/// `vgpud-prove abi`: the kernel-ABI scenarios of the sample drivers against one sysfs root,
/// printed as JSON (scenario -> lines), to compare a real kernel with the simulator.
#[derive(Parser, Debug)]
#[command(name = "vgpud-prove abi")]
struct AbiArgs {
    /// Root of sysfs (/sys on a real kernel, the mount point of vgpud-sim).
    #[arg(long)]
    sysfs: PathBuf,
    /// Real kernel: the directory holding mtty.ko, mdpy.ko and mbochs.ko (already loaded).
    #[arg(long, conflicts_with = "sim_run_dir")]
    modules: Option<PathBuf>,
    /// Simulator: its run directory (control and uevent sockets).
    #[arg(long)]
    sim_run_dir: Option<PathBuf>,
}

fn abi_main(args: AbiArgs) -> ExitCode {
    use crate::prove::abi::{Host, Probe};
    let host = match (args.modules, args.sim_run_dir) {
        (Some(modules), None) => Host::Kernel { modules },
        (None, Some(run_dir)) => Host::Sim {
            control: vgpud_sim::control_socket(&run_dir),
            feed: vgpud_sim::uevent_socket(&run_dir),
        },
        _ => {
            eprintln!(
                "vgpud-prove abi: give --modules (a real kernel) or --sim-run-dir (the simulator)"
            );
            return ExitCode::from(2);
        }
    };
    match Probe::new(&args.sysfs, host).run() {
        Ok(record) => match serde_json::to_string_pretty(&record) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vgpud-prove abi: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("vgpud-prove abi: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Plan {
    clients: usize,
    ops: usize,
    rounds: usize,
    crash_rounds: u32,
    fuzz_time: Duration,
    fuzz_calls: usize,
    /// Per parser fuzz target.
    parser_time: Duration,
    hosts: Vec<(u32, usize)>,
    growth: Vec<usize>,
}

fn plan(args: &Args) -> Plan {
    if args.quick {
        Plan {
            clients: 8,
            ops: 8,
            rounds: 3,
            crash_rounds: args.crash_rounds.unwrap_or(10),
            fuzz_time: Duration::from_secs(15),
            fuzz_calls: 300,
            parser_time: Duration::from_secs(2),
            hosts: vec![(64, 20)],
            growth: vec![0, 32],
        }
    } else {
        Plan {
            clients: 32,
            ops: 40,
            rounds: 5,
            crash_rounds: args.crash_rounds.unwrap_or(120),
            fuzz_time: Duration::from_secs(120),
            fuzz_calls: 5000,
            parser_time: Duration::from_secs(30),
            hosts: vec![(64, 200), (512, 100)],
            growth: vec![0, 32, 63],
        }
    }
}

/// 64 GPUs of mixed profiles: 59 T4s, 2 A100s (16 VFs each), an Intel GVT-g iGPU and the
/// two sample drivers.
fn load_profiles() -> Vec<String> {
    ["nvidia-t4:59", "nvidia-a100:2", "i915-gvtg", "mtty", "mdpy"]
        .map(String::from)
        .to_vec()
}

fn wanted(args: &Args, section: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|s| s == section)
}

fn vgpuctl_beside() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vgpuctl")))
        .unwrap_or_else(|| PathBuf::from("vgpuctl"))
}

async fn run_load(bins: &Bins, p: &Plan, seed: u64, rows: &mut Vec<Row>) {
    let rig = match Rig::start(bins, &load_profiles()).await {
        Ok(r) => r,
        Err(e) => return rows.push(Row::new("load", "set-up", false, e)),
    };
    let cfg = load::LoadConfig {
        clients: p.clients,
        ops_per_client: p.ops,
        rounds: p.rounds,
        seed,
    };
    match load::run(&rig, &cfg).await {
        Ok(r) => {
            rows.push(Row::new(
                "load",
                format!(
                    "{} clients x {} pairs x {} rounds, {} types",
                    p.clients, p.ops, p.rounds, r.types_used
                ),
                r.unexpected.is_empty(),
                format!(
                    "{:.0} ops/s; create {}; remove {}; {} unexpected errors{}",
                    r.ops_per_s(),
                    r.create.p50_p99(),
                    r.remove.p50_p99(),
                    r.unexpected.len(),
                    first_of(&r.unexpected)
                ),
            ));
            rows.push(Row::new(
                "load",
                "daemon RSS",
                true,
                format!(
                    "{:.1} MiB at start; after each round {}; growth first->last round {:+} KiB",
                    mib(r.rss_start_kib),
                    r.rss_after_kib
                        .iter()
                        .map(|k| format!("{:.1}", mib(*k)))
                        .collect::<Vec<_>>()
                        .join(" / "),
                    r.rss_growth_kib()
                ),
            ));
            rows.push(Row::new(
                "load",
                "D-Bus matches sysfs afterwards",
                r.inconsistencies.is_empty(),
                if r.inconsistencies.is_empty() {
                    "consistent".into()
                } else {
                    r.inconsistencies.join("; ")
                },
            ));
        }
        Err(e) => rows.push(Row::new("load", "run", false, e)),
    }
}

async fn run_faults(bins: &Bins, rows: &mut Vec<Row>) {
    match Rig::start(bins, &faults::profiles()).await {
        Ok(rig) => rows.extend(faults::run(&rig).await),
        Err(e) => rows.push(Row::new("faults", "set-up", false, e)),
    }
}

async fn run_crash(bins: &Bins, p: &Plan, seed: u64, rows: &mut Vec<Row>) {
    let mut rig = match Rig::start(bins, &crash::profiles()).await {
        Ok(r) => r,
        Err(e) => return rows.push(Row::new("crash", "set-up", false, e)),
    };
    let t0 = Instant::now();
    let r = crash::run(&mut rig, p.crash_rounds, seed).await;
    let mut restart = crate::prove::stats::Samples::default();
    for d in &r.restarts {
        restart.push(*d);
    }
    rows.push(Row::new(
        "crash",
        format!("{} SIGKILL rounds in mixed storms", r.rounds),
        r.violations.is_empty() && r.rounds == p.crash_rounds,
        format!(
            "{} acknowledged operations; {} violations{}; restart to the bus name {}; {} devices and {} definitions at the end; {:.0} s",
            r.acknowledged,
            r.violations.len(),
            first_of(&r.violations),
            restart.p50_p99(),
            r.final_devices,
            r.final_definitions,
            t0.elapsed().as_secs_f64()
        ),
    ));
}

/// The parsers' property-based targets, each for its time budget.
fn run_parser_fuzz(p: &Plan, seed: u64, rows: &mut Vec<Row>) {
    for target in fuzz::targets() {
        let r = fuzz::run(&target, fuzz::Budget::Time(p.parser_time), seed);
        rows.push(Row::new(
            "fuzz",
            format!("parser {}", r.name),
            r.findings.is_empty(),
            format!(
                "{} cases ({:.0}/s); {} findings{}",
                r.cases,
                r.rate(),
                r.findings.len(),
                first_of(&r.findings)
            ),
        ));
    }
}

async fn run_fuzz(bins: &Bins, p: &Plan, seed: u64, rows: &mut Vec<Row>) {
    run_parser_fuzz(p, seed, rows);
    let mut rig = match Rig::start(bins, &faults::profiles()).await {
        Ok(r) => r,
        Err(e) => return rows.push(Row::new("fuzz", "set-up", false, e)),
    };
    let r = dbus_fuzz::run(&mut rig, p.fuzz_time, p.fuzz_calls, seed).await;
    rows.push(Row::new(
        "fuzz",
        format!("D-Bus arguments, {} methods", r.methods),
        r.findings.is_empty(),
        format!(
            "{} calls: {} errors, {} refused by the bus, {} timeouts; {} findings{}",
            r.calls,
            r.errors,
            r.refused_by_bus,
            r.timeouts,
            r.findings.len(),
            first_of(&r.findings)
        ),
    ));
}

async fn run_compare(bins: &Bins, p: &Plan, rows: &mut Vec<Row>) {
    let vgpuctl = vgpuctl_beside();
    for &(gpus, n) in &p.hosts {
        match compare::host(bins, &vgpuctl, gpus, n, &p.growth).await {
            Ok(fig) => {
                let failed: Vec<String> = fig.ways.iter().filter_map(|w| w.error.clone()).collect();
                for line in fig.lines() {
                    println!("{line}");
                }
                for w in &fig.ways {
                    rows.push(Row::new(
                        "compare",
                        format!("{} GPUs: {}", gpus, w.name),
                        w.error.is_none(),
                        format!(
                            "create {}; remove {}",
                            w.create.p50_p99(),
                            w.remove.p50_p99()
                        ),
                    ));
                }
                rows.push(Row::new(
                    "compare",
                    format!("{gpus} GPUs: start-up, memory"),
                    failed.is_empty(),
                    format!(
                        "{:.2} s to the bus name ({} objects); RSS {:.1} -> {:.1} MiB",
                        fig.startup.as_secs_f64(),
                        fig.objects,
                        mib(fig.rss_start_kib),
                        mib(fig.rss_end_kib)
                    ),
                ));
                if !fig.growth.is_empty() {
                    rows.push(Row::new(
                        "compare",
                        format!("{gpus} GPUs: cost with devices live"),
                        true,
                        fig.growth
                            .iter()
                            .map(|(d, ms)| format!("{d} devices: {ms:.2} ms"))
                            .collect::<Vec<_>>()
                            .join("; "),
                    ));
                }
            }
            Err(e) => rows.push(Row::new("compare", format!("{gpus} GPUs"), false, e)),
        }
    }
}

/// " (first: X)" naming the first of `items`, or nothing when there are none.
fn first_of(items: &[impl std::fmt::Display]) -> String {
    items
        .first()
        .map(|x| format!(" (first: {x})"))
        .unwrap_or_default()
}

fn print_table(rows: &[Row]) {
    let w_item = rows.iter().map(|r| r.item.len()).max().unwrap_or(4).min(60);
    println!();
    println!("{:<8} {:<w_item$} {:<4} RESULT", "SECTION", "CHECK", "OK");
    for r in rows {
        println!(
            "{:<8} {:<w_item$} {:<4} {}",
            r.section,
            r.item,
            if r.ok { "yes" } else { "NO" },
            r.result
        );
    }
}

/// The `vgpud-prove` program.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VGPUD_LOG")
                // The library warns about every hostile input the fuzz targets feed it: quiet by
                // default, the summary table says what matters.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().nth(1).as_deref() == Some("abi-hold") {
        let Some(uuid) = std::env::args().nth(2) else {
            eprintln!("usage: vgpud-prove abi-hold UUID (holds /sys/bus/mdev/devices/UUID through VFIO until killed)");
            return ExitCode::from(2);
        };
        return match crate::prove::abi::hold_until_killed(std::path::Path::new("/sys"), &uuid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vgpud-prove abi-hold: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if std::env::args().nth(1).as_deref() == Some("abi") {
        return abi_main(AbiArgs::parse_from(std::env::args().skip(1)));
    }
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(clock_seed);
    let bins = match Bins::beside_current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vgpud-prove: {e}");
            return ExitCode::from(2);
        }
    };
    let mut p = plan(&args);
    if !args.compare_hosts.is_empty() {
        p.hosts = args.compare_hosts.clone();
    }
    println!(
        "vgpud-prove {} run, seed {seed} (--seed {seed} replays it)",
        if args.quick { "quick" } else { "full" }
    );
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vgpud-prove: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let rows = rt.block_on(async {
        let mut rows = Vec::new();
        if wanted(&args, "load") {
            run_load(&bins, &p, seed, &mut rows).await;
        }
        if wanted(&args, "faults") {
            run_faults(&bins, &mut rows).await;
        }
        if wanted(&args, "crash") {
            run_crash(&bins, &p, seed, &mut rows).await;
        }
        if wanted(&args, "fuzz") {
            run_fuzz(&bins, &p, seed, &mut rows).await;
        }
        if wanted(&args, "compare") {
            run_compare(&bins, &p, &mut rows).await;
        }
        rows
    });
    print_table(&rows);
    let failed = rows.iter().filter(|r| !r.ok).count();
    println!(
        "\n{} checks, {} failed, {:.0} s (seed {seed})",
        rows.len(),
        failed,
        started.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
