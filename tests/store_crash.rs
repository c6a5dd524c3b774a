//! Crash safety of the definitions store. A worker process (this test binary re-run with
//! `--exact worker_entry`) loops define / update / undefine and reports each call on stdout
//! before it starts and after it returns; the test SIGKILLs it at a random moment, 40 times.
//! After every kill: every file parses, every acknowledged change is on disk, nothing else is.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vgpud_daemon::store::{Definition, Meta, Start, Store};
use vgpud_model::{MdevUuid, ParentName, TypeId};

const ENV_DEFS: &str = "VGPUD_CRASH_WORKER_DEFS";
const ENV_STATE: &str = "VGPUD_CRASH_WORKER_STATE";
const ENV_WORKER_SEED: &str = "VGPUD_CRASH_WORKER_SEED";
/// Set to rerun with the seed a failure printed.
const ENV_SEED: &str = "VGPUD_CRASH_SEED";

const ROUNDS: usize = 40;
const PARENTS: [&str; 3] = ["0000:3b:00.0", "0000:af:00.0", "mtty"];
const ORIGIN: &str = "crash-test";
/// Protocol lines start with this, so libtest's own output on the same stdout is skipped.
const MARK: &str = "@@ ";

/// xorshift64*: deterministic for a seed, good enough to pick operations and delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn uuid(&mut self) -> MdevUuid {
        let (a, b) = (self.next(), self.next());
        let hex = format!("{a:016x}{b:016x}");
        let text = format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        MdevUuid::parse(&text).expect("formatted as a UUID")
    }
}

/// The attributes a definition of `uuid` carries: derived from the UUID so the checker can
/// recompute them; up to ~4 KiB so a file may span more than one page.
fn attrs_for(uuid: &MdevUuid) -> Vec<(String, String)> {
    let n = uuid.as_uuid().as_bytes()[0] as usize % 40;
    vec![
        ("assign_adapter".to_string(), n.to_string()),
        ("note".to_string(), "x".repeat(n * 100)),
    ]
}

fn start_word(start: Start) -> &'static str {
    start.as_str()
}

// ---------------------------------------------------------------------------------------------
// The worker

/// Not a test on its own: returns at once unless started by `sigkill_during_storms_loses_nothing`.
#[test]
fn worker_entry() {
    let (Ok(defs), Ok(state), Ok(seed)) = (
        std::env::var(ENV_DEFS),
        std::env::var(ENV_STATE),
        std::env::var(ENV_WORKER_SEED),
    ) else {
        return;
    };
    let seed: u64 = seed.parse().expect("the test passes a number");
    if let Err(message) = worker(Path::new(&defs), Path::new(&state), seed) {
        say(&format!("FAIL {message}"));
        std::process::exit(1);
    }
}

/// Writes one protocol line in a single write(2), so a kill never leaves half a line.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("\n{MARK}{line}\n").as_bytes());
    let _ = out.flush();
}

fn worker(defs: &Path, state: &Path, seed: u64) -> Result<(), String> {
    let store = Store::open(defs, state).map_err(|e| format!("open: {e}"))?;
    let mut known: Vec<(ParentName, MdevUuid, Start)> = store
        .list()
        .map_err(|e| format!("list: {e}"))?
        .into_iter()
        .map(|(d, _)| (d.parent, d.uuid, d.start))
        .collect();
    let mut rng = Rng::new(seed);
    say("READY");
    // A bound in case the test that should kill this process is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let roll = rng.below(10);
        if known.is_empty() || roll < 5 {
            let parent =
                ParentName::new(PARENTS[rng.below(3) as usize]).map_err(|e| e.to_string())?;
            // Sometimes the UUID of a definition under another parent: one UUID, two parents.
            let reuse = known
                .get(rng.below(known.len().max(1) as u64) as usize)
                .filter(|(p, u, _)| {
                    *p != parent && !known.iter().any(|(q, v, _)| *q == parent && v == u)
                })
                .map(|(_, u, _)| *u);
            let uuid = match reuse {
                Some(u) if rng.below(4) == 0 => u,
                _ => rng.uuid(),
            };
            let start = if rng.below(2) == 0 {
                Start::Auto
            } else {
                Start::Manual
            };
            let def = Definition {
                parent: parent.clone(),
                uuid,
                mdev_type: TypeId::new("nvidia-231").map_err(|e| e.to_string())?,
                start,
                attrs: attrs_for(&uuid),
            };
            let line = format!("define {parent} {uuid} {}", start_word(start));
            say(&format!("START {line}"));
            store
                .define(&def, &Meta::now(Some(1000), ORIGIN))
                .map_err(|e| format!("{line}: {e}"))?;
            say(&format!("ACK {line}"));
            known.push((parent, uuid, start));
        } else if roll < 7 {
            let i = rng.below(known.len() as u64) as usize;
            let (parent, uuid, start) = known[i].clone();
            let start = match start {
                Start::Auto => Start::Manual,
                Start::Manual => Start::Auto,
            };
            let def = Definition {
                parent: parent.clone(),
                uuid,
                mdev_type: TypeId::new("nvidia-231").map_err(|e| e.to_string())?,
                start,
                attrs: attrs_for(&uuid),
            };
            let line = format!("update {parent} {uuid} {}", start_word(start));
            say(&format!("START {line}"));
            store.update(&def).map_err(|e| format!("{line}: {e}"))?;
            say(&format!("ACK {line}"));
            known[i].2 = start;
        } else {
            let i = rng.below(known.len() as u64) as usize;
            let (parent, uuid, _) = known.swap_remove(i);
            let line = format!("undefine {parent} {uuid} -");
            say(&format!("START {line}"));
            store
                .undefine(Some(&parent), &uuid)
                .map_err(|e| format!("{line}: {e}"))?;
            say(&format!("ACK {line}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The test

type Key = (String, String);

/// Names the round and the seed in every failure, so a failing run can be replayed.
struct Failure {
    round: usize,
    seed: u64,
}

impl Failure {
    fn fail(&self, msg: String) -> ! {
        let (round, seed) = (self.round, self.seed);
        panic!("round {round}, seed {seed} (rerun with {ENV_SEED}={seed}): {msg}")
    }
}

/// What must be on disk for one (parent, UUID).
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    start: String,
    /// Whether the define was acknowledged (so its metadata must be there too).
    meta_required: bool,
}

/// One operation the worker reported.
#[derive(Debug, Clone)]
struct Op {
    verb: String,
    key: Key,
    start: String,
}

fn parse_op(rest: &str) -> Option<Op> {
    let mut words = rest.split(' ');
    let (verb, parent, uuid, start) = (words.next()?, words.next()?, words.next()?, words.next()?);
    Some(Op {
        verb: verb.to_string(),
        key: (parent.to_string(), uuid.to_string()),
        start: start.to_string(),
    })
}

/// Collects a stream into complete lines; a line cut off by the kill is dropped.
fn read_lines(
    stream: impl Read + Send + 'static,
) -> (mpsc::Receiver<String>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with('\n') => {
                    if tx.send(line.trim_end().to_string()).is_err() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
    });
    (rx, handle)
}

struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: thread::JoinHandle<()>,
    stderr: thread::JoinHandle<String>,
}

fn spawn_worker(defs: &Path, state: &Path, seed: u64) -> Worker {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "worker_entry",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(ENV_DEFS, defs)
        .env(ENV_STATE, state)
        .env(ENV_WORKER_SEED, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the worker");
    let (lines, reader) = read_lines(child.stdout.take().expect("piped"));
    let mut err = child.stderr.take().expect("piped");
    let stderr = thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    Worker {
        child,
        lines,
        reader,
        stderr,
    }
}

/// Everything observed in one round.
struct Round {
    acked: Vec<Op>,
    in_flight: Option<Op>,
    ready: bool,
}

fn run_round(defs: &Path, state: &Path, rng: &mut Rng, fail: &Failure) -> Round {
    let mut worker = spawn_worker(defs, state, rng.next());
    let delay = Duration::from_millis(5 + rng.below(46));
    let mut seen = Vec::new();
    // Start the clock once the worker is running its storm, so the kill lands inside it.
    let ready_by = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let left = ready_by.saturating_duration_since(Instant::now());
        match worker.lines.recv_timeout(left) {
            Ok(line) if line.contains(&format!("{MARK}READY")) => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    if ready {
        thread::sleep(delay);
    }
    worker.child.kill().expect("SIGKILL the worker");
    let status = worker.child.wait().expect("reap the worker");
    let _ = worker.reader.join();
    seen.extend(worker.lines.try_iter());
    let stderr = worker.stderr.join().unwrap_or_default();
    let mut round = Round {
        acked: Vec::new(),
        in_flight: None,
        ready,
    };
    for line in &seen {
        let Some((_, rest)) = line.split_once(MARK) else {
            continue;
        };
        if let Some(message) = rest.strip_prefix("FAIL ") {
            fail.fail(format!("the worker failed: {message}\n{stderr}"));
        } else if let Some(op) = rest.strip_prefix("START ") {
            round.in_flight = parse_op(op);
        } else if let Some(op) = rest.strip_prefix("ACK ") {
            round.acked.extend(parse_op(op));
            round.in_flight = None;
        }
    }
    if !ready {
        fail.fail(format!("the worker never got ready ({status})\n{stderr}"));
    }
    round
}

/// Applies an acknowledged operation to the model.
fn apply(model: &mut BTreeMap<Key, Expected>, op: &Op) {
    match op.verb.as_str() {
        "define" => {
            model.insert(
                op.key.clone(),
                Expected {
                    start: op.start.clone(),
                    meta_required: true,
                },
            );
        }
        "update" => {
            if let Some(e) = model.get_mut(&op.key) {
                e.start = op.start.clone();
            }
        }
        _ => {
            model.remove(&op.key);
        }
    }
}

/// What the store holds now, checked for parse problems, content and metadata.
fn on_disk(defs: &Path, state: &Path, fail: &Failure) -> BTreeMap<Key, (String, bool)> {
    let store = Store::open(defs, state).unwrap_or_else(|e| fail.fail(format!("reopen: {e}")));
    let listed = store
        .list()
        .unwrap_or_else(|e| fail.fail(format!("list: {e}")));
    let problems = store.problems();
    if !problems.is_empty() {
        fail.fail(format!("files that do not parse: {problems:?}"));
    }
    let mut disk = BTreeMap::new();
    for (def, meta) in listed {
        if def.attrs != attrs_for(&def.uuid) || def.mdev_type.as_str() != "nvidia-231" {
            fail.fail(format!(
                "definition {}/{} has other contents: {def:?}",
                def.parent, def.uuid
            ));
        }
        if meta.as_ref().is_some_and(|m| m.origin != ORIGIN) {
            fail.fail(format!(
                "metadata of {}/{} is {meta:?}",
                def.parent, def.uuid
            ));
        }
        let key = (def.parent.to_string(), def.uuid.to_string());
        disk.insert(key, (def.start.as_str().to_string(), meta.is_some()));
    }
    disk
}

#[test]
fn sigkill_during_storms_loses_nothing() {
    let seed = std::env::var(ENV_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (rerun with {ENV_SEED}={seed})");
    let tmp = tempfile::tempdir().expect("temp dir");
    let defs: PathBuf = tmp.path().join("mdevctl.d");
    let state: PathBuf = tmp.path().join("state");
    Store::open(&defs, &state).expect("create the store");

    let mut rng = Rng::new(seed);
    let mut model: BTreeMap<Key, Expected> = BTreeMap::new();
    let mut acks = 0;
    for round in 0..ROUNDS {
        let failure = Failure { round, seed };
        let fail = |msg: String| failure.fail(msg);
        let r = run_round(&defs, &state, &mut rng, &failure);
        assert!(r.ready);
        acks += r.acked.len();
        for op in &r.acked {
            apply(&mut model, op);
        }
        let disk = on_disk(&defs, &state, &failure);
        // The one call in flight at the kill may or may not have happened; take what the disk
        // says, provided it is one of the two.
        if let Some(op) = &r.in_flight {
            let before = model.get(&op.key).cloned();
            let mut after_model = model.clone();
            apply(&mut after_model, op);
            let after = after_model.get(&op.key).cloned();
            let now = disk.get(&op.key);
            let matches = |e: &Option<Expected>| match (e, now) {
                (None, None) => true,
                (Some(e), Some((start, _))) => e.start == *start,
                _ => false,
            };
            if !matches(&before) && !matches(&after) {
                fail(format!(
                    "{op:?} in flight left {now:?}; expected {before:?} or {after:?}"
                ));
            }
            match now {
                None => {
                    model.remove(&op.key);
                }
                Some((start, _)) => {
                    let required = before.as_ref().is_some_and(|b| b.meta_required);
                    model.insert(
                        op.key.clone(),
                        Expected {
                            start: start.clone(),
                            meta_required: required,
                        },
                    );
                }
            }
        }
        for (key, expected) in &model {
            match disk.get(key) {
                None => fail(format!("acknowledged definition {key:?} is gone")),
                Some((start, _)) if *start != expected.start => fail(format!(
                    "{key:?} has start {start}, acknowledged {}",
                    expected.start
                )),
                Some((_, false)) if expected.meta_required => {
                    fail(format!("acknowledged definition {key:?} lost its metadata"))
                }
                Some(_) => {}
            }
        }
        for key in disk.keys() {
            if !model.contains_key(key) {
                fail(format!(
                    "{key:?} is on disk but was undefined or never defined"
                ));
            }
        }
    }
    eprintln!(
        "{acks} acknowledged operations over {ROUNDS} kills; {} definitions at the end",
        model.len()
    );
    // Slow disks make fewer operations fit between kills; a handful still proves the test ran.
    assert!(
        acks >= ROUNDS / 4,
        "too few operations ran to test anything (seed {seed})"
    );
}
