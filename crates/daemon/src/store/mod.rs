//! Persistent definitions in mdevctl's layout and JSON (`<definitions-dir>/<parent>/<uuid>`), so
//! mdevctl and libvirt see what vgpud defines and vgpud sees what they define. vgpud's own
//! metadata lives in `<state-dir>/definitions/<parent>/<uuid>.json`. Every write is atomic.

mod atomic;
mod format;
mod scan;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vgpud_model::error::{Error, Result};
use vgpud_model::{MdevUuid, ParentName, TypeId};

use atomic::{Commit, Step};
use scan::Filter;

pub use format::{parse_mdevctl_json, to_mdevctl_json};
pub use watch::{Watch, DEBOUNCE};

/// Mode of a definition file, as mdevctl leaves it under the usual umask.
const DEFINITION_MODE: u32 = 0o644;
const DEFINITIONS_DIR_MODE: u32 = 0o755;
/// vgpud's metadata names users and clients: readable by root only.
const META_MODE: u32 = 0o600;
const STATE_DIR_MODE: u32 = 0o700;
/// The subdirectory of the state dir that mirrors the definitions tree.
const META_SUBDIR: &str = "definitions";
const META_SUFFIX: &str = ".json";

/// When a defined device is started: when its parent registers, or only on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Start {
    Auto,
    Manual,
}

impl Start {
    /// The word mdevctl stores: "auto" or "manual".
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Auto => "auto",
            Start::Manual => "manual",
        }
    }

    /// The mdevctl word, exactly ("auto" or "manual").
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "auto" => Some(Start::Auto),
            "manual" => Some(Start::Manual),
            _ => None,
        }
    }
}

/// A definition's attributes: (name, value) pairs, in the order they are written.
pub type Attrs = Vec<(String, String)>;

/// Called at each step of an atomic write in the given directory (fault injection in tests).
type WriteHook = Box<dyn Fn(&Path, Step) -> io::Result<()> + Send + Sync>;

/// A persistent definition of a mediated device, as mdevctl stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub parent: ParentName,
    pub uuid: MdevUuid,
    pub mdev_type: TypeId,
    pub start: Start,
    /// Attributes written in this order into the device's sysfs directory after it is created.
    pub attrs: Attrs,
}

/// What vgpud knows about a definition beyond mdevctl's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub owner_uid: Option<u32>,
    /// Who made it: "dbus:<unique name>", "ensure:<rule>" or "mdevctl".
    pub origin: String,
    /// Unix seconds.
    pub created: u64,
}

impl Meta {
    /// Metadata for a definition made now.
    pub fn now(owner_uid: Option<u32>, origin: impl Into<String>) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Meta {
            owner_uid,
            origin: origin.into(),
            created,
        }
    }
}

/// A file or directory in the definitions tree (or a metadata file) that was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub path: PathBuf,
    pub reason: String,
}

/// The definitions store. Cheap to clone; clones share one writer lock, so writes from one
/// process never interleave. Reads take no lock: every file is replaced atomically.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    definitions: PathBuf,
    meta: PathBuf,
    writer: Mutex<()>,
    report: Mutex<Report>,
    /// Fault injection for tests; a no-op in production.
    hook: WriteHook,
}

/// Problems of the last full scan, and what has been warned about, so that a malformed file
/// is logged once rather than on every list.
#[derive(Default)]
struct Report {
    problems: Vec<Problem>,
    warned: HashSet<Problem>,
}

impl Store {
    /// Opens (creating if missing) the definitions dir (0755) and the state dir (0700), and
    /// removes temporary files and metadata orphans a crash left behind.
    pub fn open(definitions_dir: &Path, state_dir: &Path) -> Result<Self> {
        Store::open_with_hook(definitions_dir, state_dir, Box::new(|_, _| Ok(())))
    }

    fn open_with_hook(definitions_dir: &Path, state_dir: &Path, hook: WriteHook) -> Result<Self> {
        atomic::ensure_root(definitions_dir, DEFINITIONS_DIR_MODE)?;
        atomic::ensure_root(state_dir, STATE_DIR_MODE)?;
        let meta = atomic::ensure_subdir(state_dir, META_SUBDIR, STATE_DIR_MODE)?;
        let store = Store {
            inner: Arc::new(Inner {
                definitions: definitions_dir.to_path_buf(),
                meta,
                writer: Mutex::new(()),
                report: Mutex::new(Report::default()),
                hook,
            }),
        };
        store.recover()?;
        Ok(store)
    }

    /// The directory mdevctl's definitions live in.
    pub fn definitions_dir(&self) -> &Path {
        &self.inner.definitions
    }

    /// Every definition in the tree, read afresh, with vgpud's metadata where it has any.
    /// Malformed files are skipped and listed by `problems`.
    pub fn list(&self) -> Result<Vec<(Definition, Option<Meta>)>> {
        let mut scan = scan::scan(&self.inner.definitions, Filter::default())?;
        let mut listed = Vec::with_capacity(scan.definitions.len());
        for def in std::mem::take(&mut scan.definitions) {
            let meta = match self.read_meta(&def.parent, &def.uuid) {
                Ok(meta) => meta,
                Err(problem) => {
                    scan.problems.push(problem);
                    None
                }
            };
            listed.push((def, meta));
        }
        self.report(&scan.problems, &scan.notes, true);
        Ok(listed)
    }

    /// The files `list` skipped the last time it ran.
    pub fn problems(&self) -> Vec<Problem> {
        self.report_lock().problems.clone()
    }

    /// The definitions of `uuid`; one UUID may be defined under several parents.
    pub fn get(&self, uuid: &MdevUuid) -> Result<Vec<Definition>> {
        self.select(Filter {
            parent: None,
            uuid: Some(uuid),
        })
    }

    /// The definitions under `parent` (to start the `Start::Auto` ones when it registers).
    pub fn for_parent(&self, parent: &ParentName) -> Result<Vec<Definition>> {
        self.select(Filter {
            parent: Some(parent),
            uuid: None,
        })
    }

    /// Stores a new definition and its metadata; `Error::DefinedOnParent` if `def.parent` already
    /// has a definition with `def.uuid`. When this returns Ok both files are durable.
    pub fn define(&self, def: &Definition, meta: &Meta) -> Result<()> {
        check_storable(def)?;
        let _writer = self.writer_lock();
        let dir = atomic::ensure_subdir(
            &self.inner.definitions,
            def.parent.as_str(),
            DEFINITIONS_DIR_MODE,
        )?;
        let name = def.uuid.to_string();
        let json = to_mdevctl_json(def);
        let hook = |step| (self.inner.hook)(&dir, step);
        atomic::write_atomic(
            &dir,
            &name,
            json.as_bytes(),
            DEFINITION_MODE,
            Commit::NoReplace,
            &hook,
        )
        .map_err(|e| match e {
            Error::FileExists(_) => Error::DefinedOnParent {
                uuid: def.uuid.to_string(),
                parent: def.parent.to_string(),
            },
            e => e,
        })?;
        if let Err(e) = self.write_meta(&def.parent, &def.uuid, meta) {
            // Not acknowledged, so not kept: a definition without its owner would escape the
            // owner's control.
            if let Err(undo) = atomic::remove_durable(&dir, &name) {
                tracing::warn!(error = %undo, path = %dir.join(&name).display(),
                    "cannot remove a definition whose metadata failed");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Replaces an existing definition (e.g. to switch autostart), keeping its metadata.
    pub fn update(&self, def: &Definition) -> Result<()> {
        check_storable(def)?;
        let _writer = self.writer_lock();
        let dir = self.inner.definitions.join(def.parent.as_str());
        let name = def.uuid.to_string();
        let exists = is_real_dir(&dir) && is_regular_file(&dir.join(&name));
        if !exists {
            return Err(Error::UnknownDevice(format!(
                "{} defined on parent {}",
                def.uuid, def.parent
            )));
        }
        let json = to_mdevctl_json(def);
        let hook = |step| (self.inner.hook)(&dir, step);
        atomic::write_atomic(
            &dir,
            &name,
            json.as_bytes(),
            DEFINITION_MODE,
            Commit::Replace,
            &hook,
        )
    }

    /// Removes the definition of `uuid` under `parent`, or under its only parent when `parent`
    /// is None (`Error::InvalidArgument` if there are several). Returns what was removed.
    pub fn undefine(
        &self,
        parent: Option<&ParentName>,
        uuid: &MdevUuid,
    ) -> Result<Vec<Definition>> {
        let _writer = self.writer_lock();
        let found = self.select(Filter {
            parent,
            uuid: Some(uuid),
        })?;
        match (found.as_slice(), parent) {
            ([], Some(p)) => Err(Error::UnknownDevice(format!(
                "{uuid} defined on parent {p}"
            ))),
            ([], None) => Err(Error::UnknownDevice(format!("{uuid} defined"))),
            ([_], _) => {
                for def in &found {
                    self.remove(def)?;
                }
                Ok(found)
            }
            (several, _) => {
                let parents: Vec<&str> = several.iter().map(|d| d.parent.as_str()).collect();
                Err(Error::InvalidArgument(format!(
                    "UUID {uuid} is defined on several parents ({}); name the parent",
                    parents.join(", ")
                )))
            }
        }
    }

    // -----------------------------------------------------------------------------------------

    fn select(&self, filter: Filter<'_>) -> Result<Vec<Definition>> {
        let scan = scan::scan(&self.inner.definitions, filter)?;
        self.report(&scan.problems, &scan.notes, false);
        Ok(scan.definitions)
    }

    /// Removes one definition, then its metadata (an orphan left by a crash in between is
    /// removed by the next `open`).
    fn remove(&self, def: &Definition) -> Result<()> {
        let dir = self.inner.definitions.join(def.parent.as_str());
        atomic::remove_durable(&dir, &def.uuid.to_string())?;
        let meta_dir = self.inner.meta.join(def.parent.as_str());
        if !is_real_dir(&meta_dir) {
            // Never vgpud's own (it makes real directories): a link there could point anywhere,
            // and removing through it would delete a file outside the state dir.
            return Ok(());
        }
        match atomic::remove_durable(&meta_dir, &meta_name(&def.uuid)) {
            Ok(()) => {}
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove the metadata of an undefined device")
            }
        }
        Ok(())
    }

    fn write_meta(&self, parent: &ParentName, uuid: &MdevUuid, meta: &Meta) -> Result<()> {
        let dir = atomic::ensure_subdir(&self.inner.meta, parent.as_str(), STATE_DIR_MODE)?;
        let json = format::meta_to_json(meta);
        let hook = |step| (self.inner.hook)(&dir, step);
        atomic::write_atomic(
            &dir,
            &meta_name(uuid),
            json.as_bytes(),
            META_MODE,
            Commit::Replace,
            &hook,
        )
    }

    fn read_meta(
        &self,
        parent: &ParentName,
        uuid: &MdevUuid,
    ) -> std::result::Result<Option<Meta>, Problem> {
        let path = self.inner.meta.join(parent.as_str()).join(meta_name(uuid));
        let problem = |reason: String| Problem {
            path: path.clone(),
            reason,
        };
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(problem(e.to_string())),
            Ok(_) => {}
        }
        let text = scan::read_small(&path).map_err(problem)?;
        format::meta_from_json(&text)
            .map(Some)
            .map_err(|e| problem(e.to_string()))
    }

    /// Clears what a crash can leave: temporary files (never acknowledged) in both trees, and
    /// metadata whose definition is gone (an interrupted undefine, or mdevctl's).
    fn recover(&self) -> Result<()> {
        for parent in real_subdirs(&self.inner.definitions)? {
            let dir = self.inner.definitions.join(parent.as_str());
            if let Err(e) = atomic::remove_temp_files(&dir, &|t| is_uuid_name(t)) {
                tracing::warn!(error = %e, "cannot clear temporary definition files");
            }
        }
        for parent in real_subdirs(&self.inner.meta)? {
            let dir = self.inner.meta.join(parent.as_str());
            let is_meta = |t: &str| t.strip_suffix(META_SUFFIX).is_some_and(is_uuid_name);
            atomic::remove_temp_files(&dir, &is_meta)?;
            self.remove_orphans(&parent, &dir)?;
        }
        Ok(())
    }

    fn remove_orphans(&self, parent: &ParentName, meta_dir: &Path) -> Result<()> {
        let entries = fs::read_dir(meta_dir).map_err(|e| Error::io(meta_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(meta_dir, e))?;
            let name = entry.file_name();
            let Some(uuid) = name.to_str().and_then(|n| n.strip_suffix(META_SUFFIX)) else {
                continue;
            };
            if !is_uuid_name(uuid) {
                continue;
            }
            let definition = self.inner.definitions.join(parent.as_str()).join(uuid);
            if let Err(e) = fs::symlink_metadata(&definition) {
                if e.kind() == io::ErrorKind::NotFound {
                    tracing::info!(path = %entry.path().display(), "removing metadata of a definition that is gone");
                    atomic::remove_durable(meta_dir, &format!("{uuid}{META_SUFFIX}"))?;
                }
            }
        }
        Ok(())
    }

    /// Records the problems of a scan, warning about each the first time it is seen. A full
    /// scan replaces `problems` and forgets warnings about files that are fixed.
    fn report(&self, problems: &[Problem], notes: &[Problem], full: bool) {
        let mut report = self.report_lock();
        let mut seen = HashSet::new();
        for p in problems {
            if !report.warned.contains(p) {
                tracing::warn!(path = %p.path.display(), reason = %p.reason, "skipping a malformed definition");
            }
            seen.insert(p.clone());
        }
        for n in notes {
            if !report.warned.contains(n) {
                tracing::warn!(path = %n.path.display(), note = %n.reason, "definition read with a warning");
            }
            seen.insert(n.clone());
        }
        if full {
            report.problems = problems.to_vec();
            report.warned = seen;
        } else {
            report.warned.extend(seen);
        }
    }

    fn writer_lock(&self) -> MutexGuard<'_, ()> {
        // The guarded value is (), so a panic while holding it leaves nothing inconsistent.
        self.inner.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report_lock(&self) -> MutexGuard<'_, Report> {
        self.inner.report.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn meta_name(uuid: &MdevUuid) -> String {
    format!("{uuid}{META_SUFFIX}")
}

/// Whether `name` is a UUID in the lowercase form vgpud writes.
fn is_uuid_name(name: &str) -> bool {
    MdevUuid::parse(name).is_ok_and(|u| u.to_string() == name)
}

/// What `scan` could not read back: a parent directory it skips, or attribute names it refuses.
/// Replaces `dir/name` with `contents` so that a crash leaves the old file or the new one, for
/// configuration vgpud writes outside its definitions (the NVIDIA scheduler's modprobe options).
pub fn replace_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    let no_faults = |_| Ok(());
    atomic::write_atomic(dir, name, contents, mode, Commit::Replace, &no_faults)
}

fn check_storable(def: &Definition) -> Result<()> {
    if def.parent.as_str().starts_with('.') {
        return Err(Error::InvalidArgument(format!(
            "parent {} starts with '.': its definitions would be hidden from every scan",
            def.parent
        )));
    }
    def.attrs
        .iter()
        .try_for_each(|(name, _)| format::check_attr_name(name))
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn is_regular_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
}

/// The real (not symbolic link) subdirectories of `dir` whose names are valid parent names.
fn real_subdirs(dir: &Path) -> Result<Vec<ParentName>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut parents = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let name = entry.file_name();
        let parent = name.to_str().and_then(|n| ParentName::new(n).ok());
        if let (true, Some(parent)) = (is_dir, parent) {
            parents.push(parent);
        }
    }
    Ok(parents)
}

/// Replaces `dir/name` atomically for state about transient devices, which a machine crash
/// takes away with the devices themselves: no fsync (it cost ~25 ms per create on a VM disk),
/// yet a crash of vgpud still leaves the old or the new file, never a torn one.
pub fn write_file_transient(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    atomic::replace_unsynced(dir, name, contents, mode)
}
