//! Crash-safe file operations: a file is replaced by writing a temporary sibling, syncing it and
//! renaming it over the target, then syncing the directory; a crash at any point leaves either
//! the old file or the new one, plus at most a temporary file that `remove_temp_files` clears.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use vgpud_model::error::{Error, Result};

/// Marks a temporary file: `.<final name>.tmp-<pid>-<n>`.
const TEMP_MARK: &str = ".tmp-";

/// How the new file takes the target's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Atomically replace whatever is there.
    Replace,
    /// Fail with `Error::FileExists` if the target exists (decided atomically by link(2)).
    NoReplace,
}

/// Points in `write_atomic` where a test can inject a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The contents are written to the temporary file, not yet synced.
    Written,
    /// The temporary file is synced, not yet renamed.
    Synced,
}

/// A hook called at each `Step`; production code passes a hook that does nothing.
pub(crate) type Hook<'a> = &'a dyn Fn(Step) -> io::Result<()>;

#[cfg(test)]
pub(crate) fn no_faults(_: Step) -> io::Result<()> {
    Ok(())
}

/// A fresh temporary name for `final_name` in the same directory.
fn temp_name(final_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{final_name}{TEMP_MARK}{}-{n}", std::process::id())
}

/// The final name a temporary file was written for, if `name` is one of ours.
pub(crate) fn temp_target(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('.')?;
    let (target, _) = rest.rsplit_once(TEMP_MARK)?;
    Some(target)
}

/// Writes `contents` to `dir/name` with permissions `mode` so that a crash leaves either the
/// old file or the complete new one, and the result is durable when this returns.
pub(crate) fn write_atomic(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
    commit: Commit,
    hook: Hook<'_>,
) -> Result<()> {
    let tmp = dir.join(temp_name(name));
    let target = dir.join(name);
    let written = write_synced(&tmp, contents, mode, hook)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| match commit {
            Commit::Replace => fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e)),
            Commit::NoReplace => link_new(&tmp, &target),
        });
    if let Err(e) = written {
        discard(&tmp);
        return Err(e);
    }
    if commit == Commit::NoReplace {
        // The target holds the contents through its own link now; the temporary name goes.
        discard(&tmp);
    }
    fsync_dir(dir)
}

/// Replaces `dir/name` atomically (temporary sibling, rename) without syncing: a crash of the
/// process leaves the old or the new file, a crash of the machine may leave either or neither.
/// For state that dies with the kernel anyway (records about transient devices).
pub(crate) fn replace_unsynced(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = dir.join(temp_name(name));
    let target = dir.join(name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e)));
    if written.is_err() {
        discard(&tmp);
    }
    written
}

fn write_synced(tmp: &Path, contents: &[u8], mode: u32, hook: Hook<'_>) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)?;
    // The umask must not decide who can read a definition (mdevctl and libvirt run as root,
    // but the files are documented as 0644).
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    hook(Step::Written)?;
    file.sync_all()?;
    hook(Step::Synced)
}

/// Gives `tmp`'s inode the name `target` unless `target` exists.
fn link_new(tmp: &Path, target: &Path) -> Result<()> {
    match fs::hard_link(tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(Error::FileExists(target.to_path_buf()))
        }
        // A file system without hard links: check, then rename. Only racy against other
        // processes writing the same name, which mdevctl itself does not guard against either.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS | libc::EMLINK)
            ) =>
        {
            match fs::symlink_metadata(target) {
                Ok(_) => Err(Error::FileExists(target.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::rename(tmp, target).map_err(|e| Error::io(target, e))
                }
                Err(e) => Err(Error::io(target, e)),
            }
        }
        Err(e) => Err(Error::io(target, e)),
    }
}

/// Removes a temporary file that will never be committed; failure is only worth a warning
/// (`remove_temp_files` clears it on the next start).
fn discard(tmp: &Path) {
    if let Err(e) = fs::remove_file(tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temporary file");
        }
    }
}

/// Removes `dir/name` and makes the removal durable.
pub(crate) fn remove_durable(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
    fsync_dir(dir)
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Makes sure `dir` and its ancestors exist; each directory created gets `mode` and is made
/// durable in its parent. An existing `dir` is accepted as it is (it may be a symbolic link the
/// administrator placed).
pub(crate) fn ensure_root(dir: &Path, mode: u32) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(Error::io(dir, io::Error::from_raw_os_error(libc::ENOTDIR))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir, e)),
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_root(&parent, mode)?;
    create_dir(&parent, dir, mode).map(|_| ())
}

/// Makes sure `top/name` is a real directory (never a symbolic link, so nothing written below
/// it can land outside `top`); when it is created, `top` is synced so the directory survives a
/// crash together with the first file in it.
pub(crate) fn ensure_subdir(top: &Path, name: &str, mode: u32) -> Result<PathBuf> {
    let dir = top.join(name);
    create_dir(top, &dir, mode)?;
    Ok(dir)
}

/// Creates `dir` in `parent` with `mode` (syncing `parent`) or accepts an existing real
/// directory; returns whether it was created.
fn create_dir(parent: &Path, dir: &Path, mode: u32) -> Result<bool> {
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            fs::set_permissions(dir, Permissions::from_mode(mode))
                .map_err(|e| Error::io(dir, e))?;
            fsync_dir(parent)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
            if meta.is_dir() {
                Ok(false)
            } else {
                // A symbolic link or a file where a directory belongs: refuse to write through it.
                Err(Error::io(dir, io::Error::from_raw_os_error(libc::ENOTDIR)))
            }
        }
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Removes our temporary files in `dir` whose final name `is_ours` accepts; they were never
/// acknowledged. Returns how many were removed.
pub(crate) fn remove_temp_files(dir: &Path, is_ours: &dyn Fn(&str) -> bool) -> Result<usize> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = temp_target(name).is_some_and(is_ours);
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if ours && is_file {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            tracing::info!(path = %path.display(), "removed a temporary file left by a crash");
            removed += 1;
        }
    }
    if removed > 0 {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn fail_at(step: Step) -> impl Fn(Step) -> io::Result<()> {
        move |s| {
            if s == step {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn temp_names_map_back_to_their_target() {
        let t = temp_name("abc.json");
        assert!(t.starts_with(".abc.json.tmp-"));
        assert_eq!(temp_target(&t), Some("abc.json"));
        assert_eq!(temp_target("abc"), None);
        assert_eq!(temp_target(".abc"), None);
        assert_ne!(temp_name("a"), temp_name("a"));
    }

    #[test]
    fn replace_writes_contents_and_mode() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"one", 0o644, Commit::Replace, &no_faults).unwrap();
        write_atomic(d.path(), "f", b"two", 0o600, Commit::Replace, &no_faults).unwrap();
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"two");
        let mode = fs::metadata(d.path().join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn failure_before_sync_leaves_old_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"old", 0o644, Commit::Replace, &no_faults).unwrap();
        let err = write_atomic(
            d.path(),
            "f",
            b"new",
            0o644,
            Commit::Replace,
            &fail_at(Step::Written),
        );
        assert!(matches!(err, Err(Error::Io { .. })));
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"old");
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn failure_before_rename_leaves_old_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"old", 0o644, Commit::Replace, &no_faults).unwrap();
        let err = write_atomic(
            d.path(),
            "f",
            b"new",
            0o644,
            Commit::Replace,
            &fail_at(Step::Synced),
        );
        assert!(err.is_err());
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"old");
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn no_replace_refuses_an_existing_target() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"old", 0o644, Commit::NoReplace, &no_faults).unwrap();
        let err = write_atomic(d.path(), "f", b"new", 0o644, Commit::NoReplace, &no_faults);
        assert!(matches!(err, Err(Error::FileExists(_))));
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"old");
        assert_eq!(names(d.path()), ["f"]);
    }

    #[test]
    fn a_symlink_in_place_of_the_temp_file_is_not_followed() {
        // create_new + O_NOFOLLOW: even a planted link with the temp name is not written through.
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let tmp = d.path().join(".x");
        std::os::unix::fs::symlink(outside.path().join("victim"), &tmp).unwrap();
        assert!(write_synced(&tmp, b"data", 0o644, &no_faults).is_err());
        assert!(!outside.path().join("victim").exists());
    }

    #[test]
    fn subdir_that_is_a_symlink_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("p")).unwrap();
        assert!(ensure_subdir(d.path(), "p", 0o755).is_err());
        assert!(ensure_subdir(d.path(), "q", 0o755).is_ok());
        assert!(d.path().join("q").is_dir());
    }

    #[test]
    fn ensure_root_creates_missing_ancestors_with_mode() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a/b/c");
        ensure_root(&root, 0o700).unwrap();
        let mode = fs::metadata(&root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        ensure_root(&root, 0o700).unwrap();
    }

    #[test]
    fn ensure_root_refuses_a_file() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), b"").unwrap();
        assert!(ensure_root(&d.path().join("f"), 0o755).is_err());
    }

    #[test]
    fn temp_files_are_removed_only_when_ours() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            ".keep.tmp-1-1",
            ".gone.tmp-1-2",
            "gone",
            ".gone",
            "other.tmp-1-1",
        ] {
            fs::write(d.path().join(n), b"").unwrap();
        }
        let removed = remove_temp_files(d.path(), &|t| t == "gone").unwrap();
        assert_eq!(removed, 1);
        assert_eq!(
            names(d.path()),
            [".gone", ".keep.tmp-1-1", "gone", "other.tmp-1-1"]
        );
    }
}
