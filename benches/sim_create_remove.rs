//! The simulator's own cost, as a tool on top of it pays it: create + remove of one device
//! through the FUSE mount with raw writes, `ls` of class/mdev_bus and a full walk of every
//! type's attributes, on mtty and 8, 64 and 512 T4s. Prints a table; asserts nothing.
//!
//! `cargo bench --bench sim_create_remove` (root and /dev/fuse needed; it skips otherwise).
//! VGPUD_BENCH_ITERATIONS overrides the 2000 create + remove iterations.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vgpud::sim::{SimOptions, Simulator};

struct Case {
    profile: &'static str,
    parent: &'static str,
    type_id: &'static str,
}

const CASES: &[Case] = &[
    Case {
        profile: "mtty",
        parent: "mtty",
        type_id: "mtty-1",
    },
    Case {
        profile: "nvidia-t4:8",
        parent: "0000:20:00.0",
        type_id: "nvidia-231",
    },
    Case {
        profile: "nvidia-t4:64",
        parent: "0000:20:00.0",
        type_id: "nvidia-231",
    },
    Case {
        profile: "nvidia-t4:512",
        parent: "0000:20:00.0",
        type_id: "nvidia-231",
    },
];

/// Latencies of one kind of operation.
struct Samples(Vec<Duration>);

impl Samples {
    fn percentile_us(&self, p: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1e6
    }

    fn ops_per_s(&self) -> f64 {
        let total: Duration = self.0.iter().sum();
        self.0.len() as f64 / total.as_secs_f64()
    }
}

fn write_attr(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every parent, every type, every attribute a manager reads; returns the files read.
fn full_walk(root: &Path) -> usize {
    let bus = root.join("class/mdev_bus");
    let mut files = 0;
    for parent in names(&bus) {
        let types = bus.join(parent).join("mdev_supported_types");
        for t in names(&types) {
            for attr in ["available_instances", "name", "description", "device_api"] {
                if std::fs::read_to_string(types.join(&t).join(attr)).is_ok() {
                    files += 1;
                }
            }
        }
    }
    files
}

struct Row {
    profile: &'static str,
    parents: usize,
    create: Samples,
    remove: Samples,
    pair: Samples,
    ls: Samples,
    walk: Duration,
    walk_files: usize,
}

fn run(case: &Case, iterations: usize, tmp: &Path) -> Row {
    let mountpoint: PathBuf = tmp.join(case.profile.replace(':', "-"));
    let started = Instant::now();
    let sim = Simulator::start(&SimOptions {
        mountpoint,
        profiles: vec![case.profile.to_owned()],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", case.profile));
    eprintln!("{}: mounted in {:?}", case.profile, started.elapsed());
    let root = sim.mountpoint().to_path_buf();
    let create = root.join(format!(
        "class/mdev_bus/{}/mdev_supported_types/{}/create",
        case.parent, case.type_id
    ));
    let (mut c, mut r, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..iterations {
        let uuid = uuid::Uuid::new_v4().to_string();
        let t0 = Instant::now();
        write_attr(&create, format!("{uuid}\n").as_bytes());
        let t1 = Instant::now();
        write_attr(
            &root.join(format!("bus/mdev/devices/{uuid}/remove")),
            b"1\n",
        );
        let t2 = Instant::now();
        c.push(t1 - t0);
        r.push(t2 - t1);
        p.push(t2 - t0);
    }
    let bus = root.join("class/mdev_bus");
    let parents = names(&bus).len();
    let ls = (0..50)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(names(&bus));
            t.elapsed()
        })
        .collect();
    let t = Instant::now();
    let walk_files = full_walk(&root);
    let walk = t.elapsed();
    sim.stop().expect("unmount");
    Row {
        profile: case.profile,
        parents,
        create: Samples(c),
        remove: Samples(r),
        pair: Samples(p),
        ls: Samples(ls),
        walk,
        walk_files,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters cases by profile name.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !Path::new("/dev/fuse").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("sim_create_remove: skipped (needs root and /dev/fuse)");
        return;
    }
    let iterations: usize = std::env::var("VGPUD_BENCH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rows: Vec<Row> = CASES
        .iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.profile.contains(f.as_str())))
        .map(|c| run(c, iterations, tmp.path()))
        .collect();

    println!();
    println!("create + remove through the FUSE mount, {iterations} iterations (µs per write)");
    println!(
        "{:<14} {:>7}  {:<7} {:>9} {:>9} {:>9}",
        "profile", "parents", "op", "ops/s", "p50 µs", "p99 µs"
    );
    for row in &rows {
        for (op, s) in [
            ("create", &row.create),
            ("remove", &row.remove),
            ("both", &row.pair),
        ] {
            println!(
                "{:<14} {:>7}  {:<7} {:>9.0} {:>9.1} {:>9.1}",
                row.profile,
                row.parents,
                op,
                s.ops_per_s(),
                s.percentile_us(0.5),
                s.percentile_us(0.99)
            );
        }
    }
    println!();
    println!("listing and walking (walk = every type's available_instances, name, description, device_api)");
    println!(
        "{:<14} {:>7}  {:>12} {:>12} {:>10} {:>12}",
        "profile", "parents", "ls p50 µs", "ls p99 µs", "walk ms", "walk files"
    );
    for row in &rows {
        println!(
            "{:<14} {:>7}  {:>12.1} {:>12.1} {:>10.1} {:>12}",
            row.profile,
            row.parents,
            row.ls.percentile_us(0.5),
            row.ls.percentile_us(0.99),
            row.walk.as_secs_f64() * 1e3,
            row.walk_files
        );
    }
}
