//! The simulator's own cost, as a tool on top of it pays it: create + remove of one device
//! through the FUSE mount with raw writes, `ls` of class/mdev_bus, a full walk of every type's
//! attributes and a `cp -a` of the whole mount, on mtty and 8, 64 and 512 T4s. Prints a table;
//! asserts nothing.
//!
//! `cargo bench --bench sim_create_remove [PROFILE...]` (root and /dev/fuse needed; it skips
//! otherwise). VGPUD_BENCH_ITERATIONS overrides the 2000 create + remove iterations.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vgpud_daemon::backend::sysfs::SysfsRoot;
use vgpud_daemon::backend::Host;
use vgpud_sim::{SimOptions, Simulator};

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

/// What a manager re-reads after every change (KERNEL-ABI.md trap 1): every parent's types and
/// each type's `available_instances`. Returns the files read.
fn full_walk(root: &Path) -> usize {
    let bus = root.join("class/mdev_bus");
    let mut files = 0;
    for parent in names(&bus) {
        let types = bus.join(parent).join("mdev_supported_types");
        for t in names(&types) {
            let text = std::fs::read_to_string(types.join(&t).join("available_instances"))
                .unwrap_or_else(|e| panic!("{t}: {e}"));
            std::hint::black_box(text);
            files += 1;
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
    /// FUSE requests per create + remove (lookup, getattr, readlink, open, read, write).
    trips: f64,
    ls: Samples,
    walk: Duration,
    walk_files: usize,
    /// `Host::parents()` (the library, every attribute of every parent), on small hosts only.
    host_parents: Option<Duration>,
    /// `cp -a` of the mount (entries copied, time, time of copying the copy), up to 64 parents.
    copy: Option<(usize, Duration, Duration)>,
}

/// `cp -a` of the whole tree into tmpfs, as a user archiving /sys would (write-only attributes
/// fail to open, so cp's exit status is not checked). tmpfs, because on a busy disk creating the
/// copy's 9,000 inodes costs more than reading them. Returns the entries copied, the time taken,
/// and the time to `cp -a` that copy again (the floor: the same work with no FUSE in it).
fn copy_tree(root: &Path) -> (usize, Duration, Duration) {
    let shm = Path::new("/dev/shm");
    let scratch = tempfile::tempdir_in(if shm.is_dir() { shm } else { Path::new("/tmp") })
        .expect("scratch dir");
    let cp = |from: &Path, to: &Path| {
        let t = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run cp");
        std::hint::black_box(status);
        t.elapsed()
    };
    let (first, second) = (scratch.path().join("copy"), scratch.path().join("again"));
    let took = cp(root, &first);
    let floor = cp(&first, &second);
    (count_entries(&first), took, floor)
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.expect("dir entry");
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    1 + if is_dir { count_entries(&e.path()) } else { 0 }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn run(case: &Case, iterations: usize, measuring: bool, tmp: &Path) -> Row {
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
    let before = sim.requests();
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
    let after = sim.requests();
    // The round trips one create + remove costs (RELEASE is not counted: it is asynchronous).
    let trips =
        (after.lookup + after.getattr + after.readlink + after.open + after.read + after.write
            - before.lookup
            - before.getattr
            - before.readlink
            - before.open
            - before.read
            - before.write) as f64
            / iterations.max(1) as f64;
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
    let host_parents = (measuring && parents <= 8).then(|| {
        let host = Host::new(SysfsRoot::new(&root).expect("sysfs root"));
        let t = Instant::now();
        std::hint::black_box(host.parents().expect("Host::parents"));
        t.elapsed()
    });
    let copy = (measuring && parents <= 64).then(|| copy_tree(&root));
    sim.stop().expect("unmount");
    Row {
        profile: case.profile,
        parents,
        create: Samples(c),
        remove: Samples(r),
        pair: Samples(p),
        trips,
        ls: Samples(ls),
        walk,
        walk_files,
        host_parents,
        copy,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it, and then
    // a few iterations on the small cases only check that it still works.
    let measuring = args.iter().any(|a| a == "--bench");
    // Any other argument filters cases by profile name.
    let mut filter: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
    // Every machine of this kind has /dev/fuse and root: a missing one fails the bench (which
    // `cargo test --all-targets` also runs), not skips it.
    assert!(
        Path::new("/dev/fuse").exists(),
        "sim_create_remove: /dev/fuse does not exist (the simulator mounts a FUSE file system)"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "sim_create_remove: needs root (the simulator mounts with allow_other)"
    );
    let iterations: usize = match std::env::var("VGPUD_BENCH_ITERATIONS") {
        Ok(s) => s.parse().expect("VGPUD_BENCH_ITERATIONS is a number"),
        Err(_) if measuring => 2000,
        Err(_) => 10,
    };
    if !measuring && filter.is_empty() {
        filter = vec!["mtty".into(), "nvidia-t4:8".into()];
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let rows: Vec<Row> = CASES
        .iter()
        .filter(|c| filter.is_empty() || filter.iter().any(|f| c.profile == f.as_str()))
        .map(|c| run(c, iterations, measuring, tmp.path()))
        .collect();

    println!();
    println!("create + remove through the FUSE mount, {iterations} iterations (µs per write)");
    println!(
        "{:<14} {:>7}  {:<7} {:>9} {:>9} {:>9} {:>9}",
        "profile", "parents", "op", "ops/s", "p50 µs", "p99 µs", "requests"
    );
    for row in &rows {
        for (op, s) in [
            ("create", &row.create),
            ("remove", &row.remove),
            ("both", &row.pair),
        ] {
            println!(
                "{:<14} {:>7}  {:<7} {:>9.0} {:>9.1} {:>9.1} {:>9}",
                row.profile,
                row.parents,
                op,
                s.ops_per_s(),
                s.percentile_us(0.5),
                s.percentile_us(0.99),
                if op == "both" {
                    format!("{:.1}", row.trips)
                } else {
                    String::new()
                }
            );
        }
    }
    println!();
    println!(
        "listing and walking (walk = readdir of every parent's types + each available_instances)"
    );
    println!(
        "{:<14} {:>7}  {:>10} {:>10} {:>9} {:>8} {:>10} {:>14} {:>28}",
        "profile",
        "parents",
        "ls p50 µs",
        "ls p99 µs",
        "walk ms",
        "files",
        "µs/file",
        "Host::parents",
        "cp -a"
    );
    for row in &rows {
        let walk_ms = row.walk.as_secs_f64() * 1e3;
        println!(
            "{:<14} {:>7}  {:>10.1} {:>10.1} {:>9.1} {:>8} {:>10.1} {:>14} {:>28}",
            row.profile,
            row.parents,
            row.ls.percentile_us(0.5),
            row.ls.percentile_us(0.99),
            walk_ms,
            row.walk_files,
            walk_ms * 1e3 / row.walk_files.max(1) as f64,
            row.host_parents
                .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "-".into()),
            row.copy
                .map(|(n, d, floor)| format!(
                    "{n} in {:.2} s (floor {:.2} s)",
                    d.as_secs_f64(),
                    floor.as_secs_f64()
                ))
                .unwrap_or_else(|| "-".into())
        );
    }
}
