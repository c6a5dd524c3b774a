//! The FUSE face of the simulator: turns VFS requests into reads of the rendered tree and
//! writes into kernel operations. Writes that block in the kernel (`remove` of a held device,
//! an unbind waiting for one, an injected delay) are answered from their own thread, so the
//! file system keeps serving everyone else meanwhile.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    WriteFlags,
};

use super::kernel::{Kernel, WriteOutcome};
use super::tree::{self, Node, WriteTarget};

/// The kernel state and the condition every blocked writer waits on.
pub struct Shared {
    pub kernel: Mutex<Kernel>,
    pub changed: Condvar,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Kernel> {
        self.kernel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until none of `ids` is held (or the simulator is stopping).
    pub fn wait_released<'a>(
        &'a self,
        guard: MutexGuard<'a, Kernel>,
        ids: &[String],
    ) -> MutexGuard<'a, Kernel> {
        self.changed
            .wait_while(guard, |k| {
                !k.shutting_down && ids.iter().any(|id| k.held.contains(id))
            })
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Attributes are never cached: every stat reaches the simulator, so a removed device reads as
/// gone at once even through a cached name.
const TTL: Duration = Duration::ZERO;
/// Names are cached. That is safe without invalidation because a path never changes kind in
/// this tree, a vanished name fails at its next getattr/open/readlink (attributes are not
/// cached), and failed lookups are never cached, so new names appear at once. It saves a
/// LOOKUP round trip per path component on every access.
const ENTRY_TTL: Duration = Duration::from_secs(30);
/// sysfs reports every attribute as one page.
const ATTR_SIZE: u64 = 4096;

#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, (String, u64)>,
}

pub struct SysFs {
    shared: Arc<Shared>,
    inodes: Mutex<Inodes>,
    started: SystemTime,
}

fn path_ino(path: &str) -> u64 {
    if path.is_empty() {
        return 1;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    (h.finish() >> 1).max(2)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl SysFs {
    pub fn new(shared: Arc<Shared>) -> Self {
        let mut inodes = Inodes::default();
        inodes.paths.insert(1, (String::new(), 1));
        Self {
            shared,
            inodes: Mutex::new(inodes),
            started: SystemTime::now(),
        }
    }

    fn inodes(&self) -> MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, ino: INodeNo) -> Option<String> {
        self.inodes().paths.get(&ino.0).map(|(p, _)| p.clone())
    }

    /// Gives `path` an inode number and counts one kernel lookup of it.
    fn remember(&self, path: &str) -> u64 {
        let mut inodes = self.inodes();
        let mut ino = path_ino(path);
        loop {
            match inodes.paths.get_mut(&ino) {
                Some((p, n)) if p == path => {
                    *n += 1;
                    return ino;
                }
                Some(_) => ino = ino.wrapping_add(1).max(2),
                None => {
                    inodes.paths.insert(ino, (path.to_owned(), 1));
                    return ino;
                }
            }
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, size, nlink) = match node {
            Node::Dir(children) => (FileType::Directory, 0o755, 0, 2 + children.len() as u32),
            Node::File { mode, .. } => (FileType::RegularFile, *mode, ATTR_SIZE, 1),
            Node::Link(target) => (FileType::Symlink, 0o777, target.len() as u64, 1),
            Node::Blob(bytes) => (FileType::RegularFile, 0o644, bytes.len() as u64, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn node(&self, ino: INodeNo) -> Result<(String, Node), Errno> {
        let path = self.path_of(ino).ok_or(Errno::ENOENT)?;
        let node = tree::resolve(&self.shared.lock(), &path).ok_or(Errno::ENOENT)?;
        Ok((path, node))
    }
}

/// Applies a write to the kernel; `Ok(None)` = done, `Ok(Some(ids))` = wait for these holds.
fn apply(k: &mut Kernel, target: &WriteTarget, data: &[u8]) -> Result<Option<Completion>, i32> {
    match target {
        WriteTarget::Create { parent, type_id } => k.create(parent, type_id, data).map(|_| None),
        WriteTarget::Remove { uuid } => match k.remove(uuid, data) {
            WriteOutcome::Done(r) => r.map(|_| None),
            WriteOutcome::WaitRelease(u) => Ok(Some(Completion::Remove(u))),
        },
        WriteTarget::Attribute { uuid, name } => k.write_attribute(uuid, name, data).map(|_| None),
        WriteTarget::CurrentVgpu { vf } => k.set_current_vgpu(vf, data).map(|_| None),
        WriteTarget::UEvent { devpath, subsystem } => {
            k.synthetic_event(devpath, subsystem, data).map(|_| None)
        }
        WriteTarget::DriverBind { driver } => {
            let name = std::str::from_utf8(data).map_err(|_| libc::EINVAL)?.trim();
            let p = k.parents.get(name).ok_or(libc::ENODEV)?;
            if p.default_driver.as_deref() != Some(driver) {
                return Err(libc::ENODEV);
            }
            if p.driver.is_some() {
                return Err(libc::EBUSY);
            }
            k.bind_driver(name).map_err(|_| libc::ENODEV)?;
            Ok(None)
        }
        WriteTarget::DriverUnbind { driver } => {
            let name = std::str::from_utf8(data)
                .map_err(|_| libc::EINVAL)?
                .trim()
                .to_owned();
            if k.parents.get(&name).and_then(|p| p.driver.as_deref()) != Some(driver) {
                return Err(libc::ENODEV);
            }
            let waiting = k.begin_unbind(&name).map_err(|_| libc::ENODEV)?;
            if waiting.is_empty() {
                k.finish_unbind(&name);
                Ok(None)
            } else {
                Ok(Some(Completion::Unbind(name, waiting)))
            }
        }
    }
}

/// The rest of a write that had to wait for a device to be released.
pub enum Completion {
    Remove(String),
    Unbind(String, Vec<String>),
}

impl Completion {
    pub fn run(self, shared: &Shared) {
        let ids = match &self {
            Completion::Remove(u) => vec![u.clone()],
            Completion::Unbind(_, ids) => ids.clone(),
        };
        let guard = shared.lock();
        let mut guard = shared.wait_released(guard, &ids);
        match self {
            Completion::Remove(u) => guard.finish_remove(&u),
            Completion::Unbind(p, _) => guard.finish_unbind(&p),
        }
        drop(guard);
        shared.changed.notify_all();
    }
}

fn finish_write(shared: &Arc<Shared>, target: WriteTarget, data: Vec<u8>, reply: ReplyWrite) {
    let mut k = shared.lock();
    let result = apply(&mut k, &target, &data);
    drop(k);
    shared.changed.notify_all();
    match result {
        Ok(None) => reply.written(data.len() as u32),
        Err(e) => reply.error(errno(e)),
        Ok(Some(completion)) => {
            let shared = shared.clone();
            let len = data.len() as u32;
            let spawned = std::thread::Builder::new()
                .name("sim-blocked-write".into())
                .spawn(move || {
                    completion.run(&shared);
                    reply.written(len);
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a thread for a blocked write: {e}");
            }
        }
    }
}

impl Filesystem for SysFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(parent_path) = self.path_of(parent) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let path = join(&parent_path, name);
        let node = tree::resolve(&self.shared.lock(), &path);
        match node {
            Some(node) => {
                let ino = self.remember(&path);
                reply.entry_with_ttls(&TTL, &ENTRY_TTL, &self.attr(ino, &node), Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if ino.0 == 1 {
            return;
        }
        let mut inodes = self.inodes();
        if let Some((_, n)) = inodes.paths.get_mut(&ino.0) {
            *n = n.saturating_sub(nlookup);
            if *n == 0 {
                inodes.paths.remove(&ino.0);
            }
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok((_, node)) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // O_TRUNC from a shell's `>` arrives here; sysfs ignores truncation.
        match self.node(ino) {
            Ok((_, node)) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok((_, Node::Link(target))) => reply.data(target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let access = flags.0 & libc::O_ACCMODE;
        match self.node(ino) {
            Ok((
                _,
                Node::File {
                    content, target, ..
                },
            )) => {
                // kernfs refuses at open a direction the attribute does not support.
                let wants_read = access == libc::O_RDONLY || access == libc::O_RDWR;
                let wants_write = access == libc::O_WRONLY || access == libc::O_RDWR;
                if (wants_read && content.is_none()) || (wants_write && target.is_none()) {
                    return reply.error(Errno::EACCES);
                }
                // Every writable attribute is root's (0200 or 0644): as the kernel's permission
                // check would say for anyone else. (No default_permissions: see ENTRY_TTL.)
                if wants_write && req.uid() != 0 {
                    return reply.error(Errno::EACCES);
                }
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Ok((_, Node::Blob(_))) => {
                let wants_write = access == libc::O_WRONLY || access == libc::O_RDWR;
                if wants_write && req.uid() != 0 {
                    return reply.error(Errno::EACCES);
                }
                reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.node(ino) {
            Ok((
                _,
                Node::File {
                    content: Some(c), ..
                },
            )) => {
                let bytes = c.as_bytes();
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                reply.data(&bytes[start..end]);
            }
            Ok((_, Node::Blob(bytes))) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                reply.data(&bytes[start..end]);
            }
            Ok((_, Node::File { content: None, .. })) => reply.error(Errno::EACCES),
            Ok(_) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(path) = self.path_of(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let mut k = self.shared.lock();
        let target = match tree::resolve(&k, &path) {
            Some(Node::File {
                target: Some(t), ..
            }) => t,
            // Config space writes (a tool setting the command register) are taken and not
            // emulated: the simulated function has no registers behind them.
            Some(Node::Blob(_)) => return reply.written(data.len() as u32),
            Some(_) => return reply.error(Errno::EACCES),
            // The attribute went away while open (the device was removed): sysfs says ENODEV.
            None => return reply.error(Errno::ENODEV),
        };
        let injection = k.take_injection(&path);
        drop(k);
        let data = data.to_vec();
        match injection {
            None => finish_write(&self.shared, target, data, reply),
            Some(inj) => {
                let shared = self.shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("sim-injected-write".into())
                    .spawn(move || {
                        if let Some(d) = inj.delay {
                            std::thread::sleep(d);
                        }
                        match inj.errno {
                            Some(e) => reply.error(errno(e)),
                            None => finish_write(&shared, target, data, reply),
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!("cannot start a thread for a delayed write: {e}");
                }
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    // sysfs has no create, mkdir, unlink, rmdir or rename: the VFS answers as it does there.

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EACCES);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let regular = mode & libc::S_IFMT == libc::S_IFREG;
        reply.error(if regular { Errno::EACCES } else { Errno::EPERM });
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: fuser::ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: fuser::ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: fuser::ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    /// No security labels or capabilities on simulated attributes.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (path, children) = match self.node(ino) {
            Ok((path, Node::Dir(children))) => (path, children),
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let k = self.shared.lock();
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (1, FileType::Directory, "..".into()),
        ];
        for name in children {
            let child = join(&path, &name);
            let kind = match tree::resolve(&k, &child) {
                Some(Node::Dir(_)) => FileType::Directory,
                Some(Node::Link(_)) => FileType::Symlink,
                Some(Node::File { .. } | Node::Blob(_)) => FileType::RegularFile,
                None => continue,
            };
            entries.push((path_ino(&child), kind, name));
        }
        drop(k);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}
