//! Watching the definitions tree, so definitions that mdevctl, libvirt or an editor write are
//! seen without a reload: inotify on the directory and on each parent's subdirectory, with
//! events gathered for 100 ms (as libvirt's node-device driver does) before one rescan.
//! A file is read once it is complete (closed after writing, or renamed into place).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::{timeout_at, Instant};

use vgpud_model::error::{Error, Result};

/// Quiet time after the last event before the tree is rescanned (libvirt waits 100 ms too).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long a file still open for writing may hold a rescan back.
const WRITE_GRACE: Duration = Duration::from_secs(2);

/// What is watched in each directory: names coming and going, and files finished.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

/// What one inotify event means for the definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing a definition depends on.
    None,
    /// The tree changed: rescan once things are quiet.
    Changed,
    /// A file is being written: wait for it to be complete.
    Writing,
    /// A file was completed (or went away): stop waiting for it, and rescan.
    Finished,
    /// A new directory: watch it, and rescan (files may be in it already).
    NewDirectory,
    /// The kernel's queue overflowed: events were lost, rescan everything.
    Overflow,
}

/// Classifies one event; pure, so it is unit-tested without inotify.
pub(crate) fn effect(mask: AddWatchFlags, name: Option<&OsString>) -> Effect {
    if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        return Effect::Overflow;
    }
    // Hidden names are temporary files (vgpud's own, editors' swap files): never definitions.
    if name.is_some_and(|n| n.to_string_lossy().starts_with('.')) {
        return Effect::None;
    }
    let is_dir = mask.contains(AddWatchFlags::IN_ISDIR);
    if is_dir && mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        return Effect::NewDirectory;
    }
    if mask.intersects(
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE,
    ) {
        return if is_dir {
            Effect::Changed
        } else {
            Effect::Finished
        };
    }
    if mask.contains(AddWatchFlags::IN_DELETE_SELF) {
        return Effect::Changed;
    }
    if !is_dir && mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MODIFY) {
        return Effect::Writing;
    }
    Effect::None
}

/// The inotify instance as the reactor wants it.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify watch over a definitions tree.
pub struct Watch {
    root: PathBuf,
    fd: AsyncFd<Fd>,
    /// Watched directories by descriptor (the root and each parent's directory).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Files created or modified and not yet closed.
    writing: HashSet<PathBuf>,
}

impl Watch {
    /// Watches `root` and every directory in it. Must be called inside a tokio runtime.
    pub fn new(root: &Path) -> Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| Error::io(root, e.into()))?;
        // SAFETY: the AsyncFd owns the Inotify, which keeps the same open descriptor until the
        // AsyncFd drops it; nothing else can close it.
        let fd = unsafe { AsyncFd::register_with_interest(Fd(inotify), Interest::READABLE) }
            .map_err(|e| Error::io(root, e.into()))?;
        let mut watch = Watch {
            root: root.to_path_buf(),
            fd,
            dirs: HashMap::new(),
            writing: HashSet::new(),
        };
        watch.add(root)?;
        watch.add_subdirs();
        Ok(watch)
    }

    fn add(&mut self, dir: &Path) -> Result<()> {
        let wd = self
            .fd
            .get_ref()
            .0
            .add_watch(dir, mask())
            .map_err(|e| Error::io(dir, e.into()))?;
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    /// Watches each parent's directory (a watch already there is kept: same descriptor).
    fn add_subdirs(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if is_dir && !hidden {
                if let Err(e) = self.add(&entry.path()) {
                    tracing::warn!("cannot watch a definitions directory: {e}");
                }
            }
        }
    }

    async fn read(&mut self) -> Result<Vec<InotifyEvent>> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|e| Error::io(&self.root, e))?;
            match guard.get_inner().0.read_events() {
                Ok(events) => return Ok(events),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(Error::io(&self.root, e.into())),
            }
        }
    }

    /// Applies one batch; true if the tree needs a rescan.
    fn apply(&mut self, events: Vec<InotifyEvent>) -> bool {
        let mut changed = false;
        for event in events {
            let dir = self.dirs.get(&event.wd).cloned();
            let path = match (&dir, &event.name) {
                (Some(d), Some(n)) => Some(d.join(n)),
                _ => None,
            };
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                self.dirs.remove(&event.wd);
            }
            match effect(event.mask, event.name.as_ref()) {
                Effect::None => {}
                Effect::Changed => changed = true,
                Effect::Writing => {
                    if let Some(p) = path {
                        self.writing.insert(p);
                    }
                }
                Effect::Finished => {
                    if let Some(p) = path {
                        self.writing.remove(&p);
                    }
                    changed = true;
                }
                Effect::NewDirectory => {
                    // Only the root's subdirectories hold definitions (scripts.d's are not read).
                    // A file created in it before this watch exists is not known to be open: the
                    // rescan may find it half written and report it, until its close, which
                    // this watch does see, rescans it.
                    if let (Some(d), Some(p)) = (&dir, path) {
                        if *d == self.root {
                            if let Err(e) = self.add(&p) {
                                tracing::warn!("cannot watch a definitions directory: {e}");
                            }
                        }
                    }
                    changed = true;
                }
                Effect::Overflow => {
                    tracing::warn!("definitions watch overflowed; rescanning");
                    self.writing.clear();
                    self.add_subdirs();
                    changed = true;
                }
            }
        }
        changed
    }

    /// Waits for the tree to change, then for it to be quiet for `DEBOUNCE` with no file half
    /// written (bounded by `WRITE_GRACE`). Errors only if inotify itself fails.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            let events = self.read().await?;
            if !self.apply(events) && self.writing.is_empty() {
                continue;
            }
            let grace = Instant::now() + WRITE_GRACE;
            loop {
                let quiet = Instant::now() + DEBOUNCE;
                let deadline = if self.writing.is_empty() {
                    quiet
                } else {
                    quiet.max(grace)
                };
                match timeout_at(deadline, self.read()).await {
                    Ok(events) => {
                        self.apply(events?);
                    }
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Option<OsString> {
        Some(OsString::from(n))
    }

    #[test]
    fn a_file_closed_after_writing_is_finished() {
        let e = effect(AddWatchFlags::IN_CLOSE_WRITE, name("u").as_ref());
        assert_eq!(e, Effect::Finished);
    }

    #[test]
    fn a_file_created_is_still_being_written() {
        let e = effect(AddWatchFlags::IN_CREATE, name("u").as_ref());
        assert_eq!(e, Effect::Writing);
    }

    #[test]
    fn a_hidden_temporary_file_is_ignored() {
        let e = effect(AddWatchFlags::IN_CLOSE_WRITE, name(".u.tmp").as_ref());
        assert_eq!(e, Effect::None);
    }

    #[test]
    fn a_new_directory_is_watched() {
        let mask = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_ISDIR;
        assert_eq!(effect(mask, name("mtty").as_ref()), Effect::NewDirectory);
    }

    #[test]
    fn a_rename_into_place_is_finished() {
        let e = effect(AddWatchFlags::IN_MOVED_TO, name("u").as_ref());
        assert_eq!(e, Effect::Finished);
    }

    #[test]
    fn an_overflow_rescans() {
        assert_eq!(effect(AddWatchFlags::IN_Q_OVERFLOW, None), Effect::Overflow);
    }

    #[tokio::test]
    async fn a_definition_written_in_a_new_parent_directory_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = Watch::new(dir.path()).unwrap();
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || {
            std::fs::create_dir(root.join("mtty")).unwrap();
            std::fs::write(root.join("mtty/u"), "{}").unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .expect("a change within 10 s")
            .unwrap();
        assert!(watch.writing.is_empty(), "{:?}", watch.writing);
    }
}
