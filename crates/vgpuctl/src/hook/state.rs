//! The hook's record of what it did for a domain: `<state-dir>/<domain>.json`, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory) on every change, removed
//! once nothing is left to undo.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vgpud_model::MdevUuid;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub domain: String,
    /// Devices the hook created for the domain: `release end` removes them.
    pub created: Vec<MdevUuid>,
    /// Definitions the hook started for the domain: `release end` stops them (they stay defined).
    #[serde(default)]
    pub started: Vec<MdevUuid>,
}

/// Longest escaped name kept whole: with ".json" it stays well under NAME_MAX (255 bytes).
const ESCAPED_MAX: usize = 200;
/// How much of a longer escaped name is kept before its hash.
const ESCAPED_KEPT: usize = 180;

/// A domain name as a file name: bytes outside `[A-Za-z0-9._+-]`, and a leading '.', become
/// `%XX`, so every name maps to one file inside the state directory. An escaped name longer
/// than `ESCAPED_MAX` bytes (escaping triples non-ASCII names) is cut and followed by `~` and a
/// hash of the whole name, which no escaped name contains, so it still fits in a file name.
pub fn file_name(domain: &str) -> String {
    let mut out = String::with_capacity(domain.len() + 5);
    for (i, b) in domain.bytes().enumerate() {
        let plain =
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-') || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    if out.len() > ESCAPED_MAX {
        // Cut at a whole escape, never inside "%XX".
        let mut cut = ESCAPED_KEPT;
        while out.as_bytes()[cut - 1] == b'%' || out.as_bytes()[cut - 2] == b'%' {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str(&format!("~{:016x}", fnv1a(domain.as_bytes())));
    }
    out.push_str(".json");
    out
}

/// FNV-1a, 64 bits: stable across builds and Rust versions, as a name on disk must be.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: &Path, domain: &str) -> Self {
        StateFile {
            dir: dir.to_owned(),
            path: dir.join(file_name(domain)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record, `None` when there is none. A file that does not parse is an error, so it is
    /// never silently overwritten with less than it knew.
    pub fn load(&self) -> Result<Option<Record>, String> {
        let text = match fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("{} is not a valid hook record: {e}", self.path.display()))
    }

    /// Writes the record, or removes the file when the record holds nothing.
    pub fn save(&self, record: &Record) -> Result<(), String> {
        if record.created.is_empty() && record.started.is_empty() {
            return match fs::remove_file(&self.path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("cannot remove {}: {e}", self.path.display())),
            };
        }
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| format!("cannot encode the hook record: {e}"))?;
        self.write_atomic(&text)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    fn write_atomic(&self, text: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".hook-")
            .suffix(".tmp")
            .tempfile_in(&self.dir)?;
        temp.write_all(text)?;
        temp.write_all(b"\n")?;
        temp.as_file().sync_all()?;
        temp.persist(&self.path).map_err(|e| e.error)?;
        File::open(&self.dir)?.sync_all()
    }
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_become_safe_file_names() {
        assert_eq!(file_name("win10-vgpu_2"), "win10-vgpu_2.json");
        assert_eq!(file_name("a/b"), "a%2Fb.json");
        assert_eq!(file_name(".."), "%2E..json");
        assert_eq!(file_name("x y"), "x%20y.json");
        assert_eq!(file_name(""), "%.json");
        assert_eq!(file_name("ü"), "%C3%BC.json");
    }

    #[test]
    fn a_long_domain_name_still_fits_in_a_file_name() {
        // Found with the libvirt fuzz target: escaping triples non-ASCII bytes, so a
        // 100-character Cyrillic name made a file name over 255 bytes and the hook could not
        // save its record.
        let long = "ж".repeat(100);
        let name = file_name(&long);
        assert!(name.len() <= 255, "{} bytes", name.len());
        assert!(name.contains('~') && name.ends_with(".json"), "{name}");
        assert_ne!(name, file_name(&"ж".repeat(101)));
        assert_eq!(name, file_name(&long));
        // The cut never splits an escape.
        for n in 60..70 {
            let name = file_name(&format!("{}{}", "a".repeat(n), "ж".repeat(60)));
            let kept = name.split('~').next().unwrap();
            assert!(
                !kept.ends_with('%') && kept.as_bytes()[kept.len() - 2] != b'%',
                "{name}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path(), &long);
        let record = Record {
            domain: long.clone(),
            created: vec![MdevUuid::new_v4()],
            started: vec![],
        };
        state.save(&record).unwrap();
        assert_eq!(state.load().unwrap(), Some(record));
    }

    #[test]
    fn records_round_trip_and_empty_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(&dir.path().join("hook"), "vm/1");
        assert_eq!(state.load().unwrap(), None);
        let record = Record {
            domain: "vm/1".into(),
            created: vec![MdevUuid::new_v4()],
            started: vec![],
        };
        state.save(&record).unwrap();
        assert!(state.path().ends_with("vm%2F1.json"));
        assert_eq!(state.load().unwrap(), Some(record.clone()));
        state
            .save(&Record {
                created: vec![],
                ..record
            })
            .unwrap();
        assert!(!state.path().exists());
        assert_eq!(
            fs::read_dir(dir.path().join("hook")).unwrap().count(),
            0,
            "no temporary file is left"
        );
    }

    #[test]
    fn a_corrupt_record_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path(), "vm");
        fs::write(state.path(), b"{not json").unwrap();
        assert!(state
            .load()
            .unwrap_err()
            .contains("not a valid hook record"));
    }
}
