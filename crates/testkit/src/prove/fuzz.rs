//! A property-based fuzzer for everything vgpud reads from outside: policy files, uevents,
//! libvirt domain XML, mdevctl definitions and sysfs attribute text. Stable Rust only: each
//! target draws one input from a seeded generator, runs the parser, and checks its properties;
//! a panic or a broken property is a `Finding` with the seed that reproduces it (`replay`).
//!
//! `tests/fuzz.rs` runs every target for a few seconds (`VGPUD_FUZZ_SECONDS`, `VGPUD_FUZZ_SEED`);
//! a longer run is `run(&target, Budget::Time(..), seed)` for each of `targets()`.

mod libvirt;
mod mutate;
mod policy;
mod store;
mod sysfs;
mod uevent;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use mutate::Rng;

/// Longest rendering of an input kept in a finding.
const INPUT_SHOWN: usize = 512;
/// A run stops collecting after this many findings: they usually share one cause.
const MAX_FINDINGS: usize = 8;

/// One generated input: the generator to draw it from, and what it was, for the report.
pub struct Case {
    rng: Rng,
    input: String,
}

impl Case {
    fn new(seed: u64) -> Self {
        Case {
            rng: Rng::new(seed),
            input: String::new(),
        }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Records the input about to be tried (escaped, truncated), so a panic can show it.
    pub fn show(&mut self, input: impl AsRef<[u8]>) {
        self.input = escape(input.as_ref());
    }

    /// Adds a labelled part to the recorded input (for inputs made of several pieces).
    pub fn show_part(&mut self, label: &str, part: impl AsRef<[u8]>) {
        if !self.input.is_empty() {
            self.input.push_str("; ");
        }
        self.input.push_str(label);
        self.input.push_str(": ");
        self.input.push_str(&escape(part.as_ref()));
    }
}

/// A fuzz target: draws one input and checks it. `Err` is a broken property, in a sentence.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run_one: fn(&mut Case) -> Result<(), String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

/// Every target, in a fixed order.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "policy",
            run_one: policy::run_one,
        },
        Target {
            name: "uevent",
            run_one: uevent::run_one,
        },
        Target {
            name: "libvirt-xml",
            run_one: libvirt::run_one,
        },
        Target {
            name: "mdevctl-json",
            run_one: store::run_json,
        },
        Target {
            name: "store-scan",
            run_one: store::run_scan,
        },
        Target {
            name: "sysfs-text",
            run_one: sysfs::run_text,
        },
        Target {
            name: "sysfs-tree",
            run_one: sysfs::run_tree,
        },
    ]
}

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    targets().into_iter().find(|t| t.name == name)
}

/// How long a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Cases(u64),
    Time(Duration),
}

/// A case that panicked or broke a property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub target: &'static str,
    /// `replay(target, seed)` runs this case again.
    pub seed: u64,
    /// The input, escaped and truncated.
    pub input: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seed {:#018x}: {}\n  input: {}",
            self.target, self.seed, self.message, self.input
        )
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: &'static str,
    pub cases: u64,
    pub elapsed: Duration,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Cases per second (for the record; nothing asserts on it).
    pub fn rate(&self) -> f64 {
        self.cases as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `target` within `budget`. Case `i` uses the seed `case_seed(seed, i)`, so every
/// finding carries the one seed that reproduces it.
pub fn run(target: &Target, budget: Budget, seed: u64) -> Report {
    let _quiet = QuietPanics::install();
    let start = Instant::now();
    let mut findings = Vec::new();
    let mut cases = 0;
    while findings.len() < MAX_FINDINGS {
        let more = match budget {
            Budget::Cases(n) => cases < n,
            Budget::Time(d) => start.elapsed() < d,
        };
        if !more {
            break;
        }
        findings.extend(one_case(target, case_seed(seed, cases)));
        cases += 1;
    }
    Report {
        name: target.name,
        cases,
        elapsed: start.elapsed(),
        findings,
    }
}

/// Runs the one case of `target` that `seed` draws; the finding if it fails.
pub fn replay(target: &Target, seed: u64) -> Option<Finding> {
    let _quiet = QuietPanics::install();
    one_case(target, seed)
}

/// The seed of case `index` of a run seeded with `run_seed`.
pub fn case_seed(run_seed: u64, index: u64) -> u64 {
    mutate::splitmix64(run_seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn one_case(target: &Target, seed: u64) -> Option<Finding> {
    let mut case = Case::new(seed);
    FUZZING.with(|f| f.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run_one)(&mut case)));
    FUZZING.with(|f| f.set(false));
    let message = match outcome {
        Ok(Ok(())) => return None,
        Ok(Err(broken)) => broken,
        Err(payload) => {
            let hooked = LAST_PANIC.with(|p| p.borrow_mut().take());
            format!(
                "panic: {}",
                hooked.unwrap_or_else(|| payload_text(&*payload))
            )
        }
    };
    Some(Finding {
        target: target.name,
        seed,
        input: case.input,
        message,
    })
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-text panic payload".to_owned()
    }
}

thread_local! {
    /// Set while this thread runs a case: its panics are findings, not noise on stderr.
    static FUZZING: Cell<bool> = const { Cell::new(false) };
    /// The message and location of the last panic of a case on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

type Hook = Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// The hook in place before the first run started, and how many runs are going on.
static HOOK: Mutex<(usize, Option<std::sync::Arc<Hook>>)> = Mutex::new((0, None));

/// While alive, panics on fuzzing threads are recorded quietly; other threads' panics still go
/// to the previous hook. Runs on several threads share one installation; the last one to end
/// puts the previous hook back.
struct QuietPanics;

impl QuietPanics {
    fn install() -> Self {
        let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        if hook.0 == 0 {
            let previous: std::sync::Arc<Hook> = std::sync::Arc::new(panic::take_hook());
            let chained = previous.clone();
            panic::set_hook(Box::new(move |info| {
                if FUZZING.with(Cell::get) {
                    LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
                } else {
                    chained(info);
                }
            }));
            hook.1 = Some(previous);
        }
        hook.0 += 1;
        QuietPanics
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let mut hook = HOOK.lock().unwrap_or_else(|e| e.into_inner());
        hook.0 -= 1;
        if hook.0 == 0 {
            if let Some(previous) = hook.1.take() {
                // Our hook holds the other reference; drop it first so `previous` is unique.
                drop(panic::take_hook());
                match std::sync::Arc::try_unwrap(previous) {
                    Ok(previous) => panic::set_hook(previous),
                    Err(shared) => panic::set_hook(Box::new(move |info| shared(info))),
                }
            }
        }
    }
}

/// A fresh directory for one case's files: in /dev/shm when there is one (memory: creating,
/// syncing and deleting thousands of small files there is fast), else in the temp dir.
pub fn scratch_dir() -> Result<tempfile::TempDir, String> {
    let shm = std::path::Path::new("/dev/shm");
    let made = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("vgpud-fuzz-")
            .tempdir_in(shm)
            .or_else(|_| tempfile::tempdir())
    } else {
        tempfile::tempdir()
    };
    made.map_err(|e| format!("cannot make a scratch directory: {e}"))
}

/// The invariant of every name used as a path component: not empty, at most 255 bytes, no
/// `/`, not `.` or `..`, no NUL or other control character.
pub fn path_safe(what: &str, name: &str) -> Result<(), String> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > 255 {
        "is longer than 255 bytes"
    } else if name == "." || name == ".." {
        "is a relative path element"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(format!(
        "accepted {what} {:?} {problem}",
        escape(name.as_bytes())
    ))
}

/// `bytes` as printable ASCII: `\n`, `\0`, `\xff`-style escapes, cut to `INPUT_SHOWN` with
/// the full length noted.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if out.len() >= INPUT_SHOWN {
                break;
            }
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii_graphic() || c == ' ' => out.push(c),
                c => out.extend(c.escape_default()),
            }
        }
        for b in chunk.invalid() {
            if out.len() < INPUT_SHOWN {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    if out.len() >= INPUT_SHOWN {
        out.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Panics on about one input in eight: when the first draw is a multiple of 8.
    fn planted(case: &mut Case) -> Result<(), String> {
        let draw = case.rng().next_u64();
        case.show(draw.to_string());
        if draw % 8 == 0 {
            panic!("planted panic on {draw}");
        }
        Ok(())
    }

    /// Breaks its property on odd draws, without panicking.
    fn broken(case: &mut Case) -> Result<(), String> {
        let draw = case.rng().next_u64();
        case.show(draw.to_string());
        if draw % 2 == 1 {
            return Err(format!("{draw} is odd"));
        }
        Ok(())
    }

    const PLANTED: Target = Target {
        name: "planted",
        run_one: planted,
    };

    #[test]
    fn a_planted_panic_is_a_finding_with_its_seed_and_input() {
        let report = run(&PLANTED, Budget::Cases(200), 7);
        let finding = report.findings.first().expect("the planted panic is found");
        assert!(finding.message.contains("planted panic on"), "{finding}");
        assert!(
            finding.message.contains("fuzz.rs"),
            "location kept: {finding}"
        );
        let draw: u64 = finding.input.parse().expect("the input is the draw");
        assert_eq!(draw % 8, 0);
        assert!(finding.message.contains(&draw.to_string()));
    }

    #[test]
    fn the_seed_of_a_finding_reproduces_it() {
        let report = run(&PLANTED, Budget::Cases(200), 99);
        let finding = &report.findings[0];
        assert_eq!(replay(&PLANTED, finding.seed).as_ref(), Some(finding));
    }

    #[test]
    fn a_broken_property_is_a_finding_and_the_run_stops_at_the_cap() {
        let target = Target {
            name: "broken",
            run_one: broken,
        };
        let report = run(&target, Budget::Cases(1000), 1);
        assert_eq!(report.findings.len(), MAX_FINDINGS);
        assert!(report.cases < 1000);
        assert!(report
            .findings
            .iter()
            .all(|f| f.message.ends_with("is odd")));
    }

    #[test]
    fn the_same_seed_draws_the_same_cases() {
        let a = run(&PLANTED, Budget::Cases(300), 5);
        let b = run(&PLANTED, Budget::Cases(300), 5);
        assert_eq!(a.findings, b.findings);
        assert_eq!(a.cases, b.cases);
    }

    #[test]
    fn a_panic_outside_a_case_is_not_recorded() {
        run(&PLANTED, Budget::Cases(50), 3);
        // Outside a case a panic goes to the previous hook, not into a finding.
        let caught = panic::catch_unwind(|| panic!("after the run"));
        assert!(caught.is_err());
        assert_eq!(LAST_PANIC.with(|p| p.borrow().clone()), None);
    }

    #[test]
    fn escape_shows_controls_and_invalid_utf8_and_truncates() {
        assert_eq!(escape(b"a\0b\n\xff\\"), "a\\u{0}b\\n\\xff\\\\");
        let long = escape(&[b'x'; 2000]);
        assert!(long.ends_with("... (2000 bytes in all)"), "{long}");
        assert!(long.len() < 600);
    }

    #[test]
    fn every_target_has_a_unique_name_and_can_be_found() {
        let names: Vec<_> = targets().iter().map(|t| t.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for name in names {
            assert_eq!(target(name).map(|t| t.name), Some(name));
        }
    }
}
