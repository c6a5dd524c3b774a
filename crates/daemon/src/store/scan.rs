//! Reading the definitions tree `<dir>/<parent>/<uuid>` as mdevctl lays it out. Anything that
//! is not a well-formed definition is reported as a `Problem` and skipped, never removed:
//! the files belong to the administrator, mdevctl and libvirt as much as to vgpud.

use std::fs::{self, DirEntry, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use vgpud_model::error::{Error, Result};
use vgpud_model::{MdevUuid, ParentName};

use super::{format, Definition, Problem};

/// Larger than any real definition by orders of magnitude; a bigger file is refused unread.
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// What one pass over the tree found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub definitions: Vec<Definition>,
    /// Files and directories skipped because they are malformed.
    pub problems: Vec<Problem>,
    /// Definitions read, but with something worth a warning (keys mdevctl ignores).
    pub notes: Vec<Problem>,
}

/// Which definitions a scan is after.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Filter<'a> {
    pub parent: Option<&'a ParentName>,
    pub uuid: Option<&'a MdevUuid>,
}

/// Reads every definition under `root` that `filter` selects, sorted by parent then UUID.
pub(crate) fn scan(root: &Path, filter: Filter<'_>) -> Result<Scan> {
    let mut scan = Scan::default();
    match filter.parent {
        // One parent: look at its directory only, so a problem elsewhere costs nothing.
        Some(parent) => match fs::symlink_metadata(root.join(parent.as_str())) {
            Ok(m) if m.is_dir() => scan_parent(root, parent, filter.uuid, &mut scan),
            Ok(m) if m.file_type().is_symlink() => scan.problem(
                root.join(parent.as_str()),
                "a symbolic link; definitions are not read through links",
            ),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => scan.problem(root.join(parent.as_str()), e),
        },
        None => {
            let entries = fs::read_dir(root).map_err(|e| Error::io(root, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(root, e))?;
                if let Some(parent) = parent_dir(&entry, &mut scan) {
                    scan_parent(root, &parent, filter.uuid, &mut scan);
                }
            }
        }
    }
    scan.definitions
        .sort_by(|a, b| (&a.parent, &a.uuid).cmp(&(&b.parent, &b.uuid)));
    Ok(scan)
}

/// The parent a top-level entry names, if it is a directory of definitions.
fn parent_dir(entry: &DirEntry, scan: &mut Scan) -> Option<ParentName> {
    let path = entry.path();
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        scan.problem(path, "the directory name is not UTF-8");
        return None;
    };
    let file_type = match entry.file_type() {
        Ok(t) => t,
        Err(e) => {
            scan.problem(path, e);
            return None;
        }
    };
    if name.starts_with('.') {
        return None;
    }
    if file_type.is_symlink() {
        scan.problem(
            path,
            "a symbolic link; definitions are not read through links",
        );
        return None;
    }
    // Files at the top level are not definitions; mdevctl skips them too.
    if !file_type.is_dir() {
        return None;
    }
    match ParentName::new(name) {
        Ok(parent) => Some(parent),
        Err(e) => {
            scan.problem(path, e);
            None
        }
    }
}

fn scan_parent(root: &Path, parent: &ParentName, uuid: Option<&MdevUuid>, scan: &mut Scan) {
    let dir = root.join(parent.as_str());
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => return scan.problem(dir, e),
    };
    for entry in entries {
        match entry {
            Ok(entry) => scan_file(parent, &entry, uuid, scan),
            Err(e) => return scan.problem(dir, e),
        }
    }
}

fn scan_file(parent: &ParentName, entry: &DirEntry, want: Option<&MdevUuid>, scan: &mut Scan) {
    let path = entry.path();
    let name = entry.file_name();
    let Some(name) = name.to_str() else {
        return scan.problem(path, "the file name is not UTF-8");
    };
    // Hidden files include our own temporary files, complete or not: never definitions.
    if name.starts_with('.') {
        return;
    }
    let file_type = match entry.file_type() {
        Ok(t) => t,
        Err(e) => return scan.problem(path, e),
    };
    if file_type.is_dir() {
        // mdevctl keeps scripts.d/callouts and scripts.d/notifiers here; not definitions.
        return;
    }
    if file_type.is_symlink() {
        return scan.problem(
            path,
            "a symbolic link; definitions are not read through links",
        );
    }
    if !file_type.is_file() {
        return scan.problem(path, "not a regular file");
    }
    let uuid = match MdevUuid::parse(name) {
        Ok(uuid) => uuid,
        Err(e) => return scan.problem(path, e),
    };
    if uuid.to_string() != name {
        // Every path vgpud builds uses the lowercase form; this file could never be updated
        // or undefined by that name.
        return scan.problem(path, "the UUID in the file name is not in lowercase form");
    }
    if want.is_some_and(|w| *w != uuid) {
        return;
    }
    let text = match read_small(&path) {
        Ok(text) => text,
        Err(reason) => return scan.problem(path, reason),
    };
    match format::parse(&text) {
        Ok(parsed) => {
            if !parsed.unknown_keys.is_empty() {
                let reason = format!("keys mdevctl ignores: {}", parsed.unknown_keys.join(", "));
                scan.notes.push(Problem {
                    path: path.clone(),
                    reason,
                });
            }
            scan.definitions.push(Definition {
                parent: parent.clone(),
                uuid,
                mdev_type: parsed.mdev_type,
                start: parsed.start,
                attrs: parsed.attrs,
            });
        }
        Err(e) => scan.problem(path, e),
    }
}

/// Reads a UTF-8 regular file of at most `MAX_FILE` bytes without following a symbolic link.
pub(crate) fn read_small(path: &Path) -> std::result::Result<String, String> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever, and
    // whatever the caller saw in the directory may have been replaced by one since.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".to_string());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

impl Scan {
    fn problem(&mut self, path: PathBuf, reason: impl std::fmt::Display) {
        self.problems.push(Problem {
            path,
            reason: reason.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_refuses_a_fifo_without_waiting_for_a_writer() {
        // Found by fuzzing: a FIFO where vgpud's metadata belongs hung `Store::list` forever.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(read_small(&fifo)));
        let read = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("read_small returned instead of waiting for a writer");
        assert_eq!(read, Err("not a regular file".to_string()));
    }

    #[test]
    fn read_small_refuses_a_directory_and_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_small(dir.path()).is_err());
        let file = dir.path().join("f");
        std::fs::write(&file, "text").unwrap();
        assert_eq!(read_small(&file), Ok("text".to_string()));
    }
}
