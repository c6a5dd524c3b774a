//! The FUSE face of the simulator: turns VFS requests into reads of the rendered tree and
//! writes into kernel operations. Writes that block in the kernel (`remove` of a held device,
//! an unbind waiting for one, an injected delay) are answered from their own thread, so the
//! file system keeps serving everyone else meanwhile.

use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};

use super::cache::{self, Cache, Requests};
use super::inodes::{join, path_ino, Inodes};
use super::kernel::{Kernel, WriteOutcome};
use super::tree::{self, Node, WriteTarget};

/// The kernel state, the condition every blocked writer waits on, and what the kernel caches.
pub struct Shared {
    pub kernel: Mutex<Kernel>,
    pub changed: Condvar,
    pub cache: Cache,
    pub inodes: Inodes,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Kernel> {
        self.kernel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a topology change (the state is already changed): the kernel's cached view goes
    /// now, and again a moment later, for a lookup that read the old state and whose reply the
    /// kernel had not taken in yet (it would cache a vanished node as present).
    pub fn topology_changed(self: &Arc<Self>) {
        self.cache.invalidate_all();
        let shared = self.clone();
        let spawned = std::thread::Builder::new()
            .name("sim-invalidate".into())
            .spawn(move || {
                std::thread::sleep(cache::RACE_WINDOW);
                shared.cache.invalidate_all();
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread to invalidate the kernel's cache again: {e}");
        }
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

/// A volatile node's attributes are never cached: every stat reaches the simulator, so a
/// removed device reads as gone at once even through a cached name. (Static nodes: cache.rs.)
const TTL: Duration = Duration::ZERO;
/// Names are cached. That is safe without invalidation because a path never changes kind in
/// this tree, a vanished name fails at its next getattr/open/readlink (its attributes are not
/// cached, or were invalidated with the topology change that removed it), and failed lookups
/// are never cached, so new names appear at once. It saves a LOOKUP round trip per path
/// component on every access.
const ENTRY_TTL: Duration = Duration::from_secs(30);
/// sysfs reports every attribute as one page.
const ATTR_SIZE: u64 = 4096;

pub struct SysFs {
    shared: Arc<Shared>,
    started: SystemTime,
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

impl SysFs {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            started: SystemTime::now(),
        }
    }

    fn path_of(&self, ino: INodeNo) -> Option<String> {
        self.shared.inodes.path_of(ino.0)
    }

    fn remember(&self, path: &str) -> u64 {
        self.shared.inodes.remember(path)
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
        self.node_and_lifetime(ino)
            .map(|(path, node, _)| (path, node))
    }

    /// The node and whether it is static (cache.rs), decided on one snapshot of the state.
    fn node_and_lifetime(&self, ino: INodeNo) -> Result<(String, Node, bool), Errno> {
        let path = self.path_of(ino).ok_or(Errno::ENOENT)?;
        let k = self.shared.lock();
        let node = tree::resolve(&k, &path).ok_or(Errno::ENOENT)?;
        let fixed = cache::is_static(&k, &path);
        drop(k);
        Ok((path, node, fixed))
    }

    /// The attribute TTL for a node, noting the inode if the kernel may keep it.
    fn attr_ttl(&self, ino: u64, fixed: bool) -> Duration {
        if fixed {
            self.shared.cache.note_cached(ino);
            cache::STATIC_TTL
        } else {
            TTL
        }
    }

    fn requests(&self) -> &Requests {
        &self.shared.cache.requests
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
    pub fn run(self, shared: &Arc<Shared>) {
        let ids = match &self {
            Completion::Remove(u) => vec![u.clone()],
            Completion::Unbind(_, ids) => ids.clone(),
        };
        let guard = shared.lock();
        let mut guard = shared.wait_released(guard, &ids);
        let topology = match self {
            Completion::Remove(u) => {
                guard.finish_remove(&u);
                false
            }
            Completion::Unbind(p, _) => {
                guard.finish_unbind(&p);
                true
            }
        };
        drop(guard);
        shared.changed.notify_all();
        if topology {
            shared.topology_changed();
        }
    }
}

fn finish_write(shared: &Arc<Shared>, target: WriteTarget, data: Vec<u8>, reply: ReplyWrite) {
    let mut k = shared.lock();
    let result = apply(&mut k, &target, &data);
    drop(k);
    shared.changed.notify_all();
    // A driver bind or unbind changes the topology (an unbind already unregistered the parent
    // when it has to wait): the kernel's cached view of static nodes must go before the reply.
    if matches!(
        target,
        WriteTarget::DriverBind { .. } | WriteTarget::DriverUnbind { .. }
    ) {
        shared.topology_changed();
    }
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
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // A listing also answers the lookups of its entries (`ls -l`, `cp -a`, a full walk);
        // AUTO: only where lookups followed the last listing, so a plain `ls` of 512 parents
        // does not make the kernel instantiate 512 inodes each time.
        let plus = InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        if let Err(missing) = config.add_capabilities(plus) {
            tracing::debug!("the kernel lacks {missing:?}: listings will be followed by lookups");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Requests::count(&self.requests().lookup);
        let Some(parent_path) = self.path_of(parent) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        let path = join(&parent_path, name);
        let k = self.shared.lock();
        let node = tree::resolve(&k, &path);
        let fixed = node.is_some() && cache::is_static(&k, &path);
        drop(k);
        match node {
            Some(node) => {
                let ino = self.remember(&path);
                let (attr_ttl, entry_ttl) = if fixed {
                    (self.attr_ttl(ino, true), cache::STATIC_TTL)
                } else {
                    (TTL, ENTRY_TTL)
                };
                let attr = self.attr(ino, &node);
                reply.entry_with_ttls(&attr_ttl, &entry_ttl, &attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        Requests::count(&self.requests().getattr);
        match self.node_and_lifetime(ino) {
            Ok((_, node, fixed)) => {
                reply.attr(&self.attr_ttl(ino.0, fixed), &self.attr(ino.0, &node))
            }
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
        Requests::count(&self.requests().readlink);
        match self.node(ino) {
            Ok((_, Node::Link(target))) => reply.data(target.as_bytes()),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        Requests::count(&self.requests().open);
        let access = flags.0 & libc::O_ACCMODE;
        match self.node_and_lifetime(ino) {
            Ok((
                _,
                Node::File {
                    content, target, ..
                },
                _,
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
            Ok((_, Node::Blob(_), fixed)) => {
                let wants_write = access == libc::O_WRONLY || access == libc::O_RDWR;
                if wants_write && req.uid() != 0 {
                    return reply.error(Errno::EACCES);
                }
                // A static blob (config space) has its true size, so the page cache serves it
                // exactly; the kernel keeps it across opens until a topology change.
                if fixed {
                    self.shared.cache.note_cached(ino.0);
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
                } else {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
                }
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
        Requests::count(&self.requests().read);
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
        Requests::count(&self.requests().write);
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
        // Nothing is buffered: ENOSYS tells the kernel to stop sending FLUSH on every close.
        reply.error(Errno::ENOSYS);
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

    /// No security labels, capabilities or ACLs on simulated attributes. ENOSYS makes the
    /// kernel stop asking (a round trip per file in `cp -a` or `ls -l`): ACL reads still find
    /// none, as before and as on sysfs; other names then fail with EOPNOTSUPP, where sysfs
    /// answers ENODATA for `security.*` and `trusted.*` and EOPNOTSUPP for the rest.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = match self.listing(ino, offset) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        for (next, entry) in listing {
            let kind = kind_of(&entry.node);
            if reply.add(INodeNo(path_ino(&entry.path)), next, kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    /// A listing with each entry's attributes: every entry but `.` and `..` counts as a lookup.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = match self.listing(ino, offset) {
            Ok(listing) => listing,
            Err(e) => return reply.error(e),
        };
        for (next, entry) in listing {
            let dot = entry.name == "." || entry.name == "..";
            let ino = if dot {
                path_ino(&entry.path)
            } else {
                self.remember(&entry.path)
            };
            // One TTL for name and attributes here: a volatile entry caches neither.
            let ttl = if entry.fixed && !dot {
                self.attr_ttl(ino, true)
            } else {
                TTL
            };
            let attr = self.attr(ino, &entry.node);
            if reply.add(INodeNo(ino), next, &entry.name, &ttl, &attr, Generation(0)) {
                if !dot {
                    self.shared.inodes.forget(ino, 1);
                }
                break;
            }
        }
        reply.ok();
    }
}

/// One directory entry as a listing shows it.
struct Entry {
    name: String,
    path: String,
    node: Node,
    fixed: bool,
}

fn kind_of(node: &Node) -> FileType {
    match node {
        Node::Dir(_) => FileType::Directory,
        Node::Link(_) => FileType::Symlink,
        Node::File { .. } | Node::Blob(_) => FileType::RegularFile,
    }
}

impl SysFs {
    /// `.`, `..` and the children of a directory, resolved on one snapshot of the state.
    /// A listing of directory `ino` from `offset` on, for readdir and readdirplus (counted as
    /// one readdir): each entry with the offset that resumes after it.
    fn listing(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<impl Iterator<Item = (u64, Entry)>, Errno> {
        Requests::count(&self.requests().readdir);
        let entries = self.entries(ino)?;
        Ok(entries
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, entry)| ((i + 1) as u64, entry)))
    }

    fn entries(&self, ino: INodeNo) -> Result<Vec<Entry>, Errno> {
        let path = self.path_of(ino).ok_or(Errno::ENOENT)?;
        let k = self.shared.lock();
        let here = tree::resolve(&k, &path).ok_or(Errno::ENOENT)?;
        let Node::Dir(children) = &here else {
            return Err(Errno::ENOTDIR);
        };
        let fixed = cache::is_static(&k, &path);
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
        let parent_node = tree::resolve(&k, &parent).unwrap_or_else(|| here.clone());
        let mut entries = vec![
            Entry {
                name: ".".into(),
                path: path.clone(),
                node: here.clone(),
                fixed,
            },
            Entry {
                name: "..".into(),
                path: parent,
                node: parent_node,
                fixed: false,
            },
        ];
        for name in children {
            let child = join(&path, name);
            let Some(node) = tree::resolve(&k, &child) else {
                continue;
            };
            let fixed = cache::is_static(&k, &child);
            entries.push(Entry {
                name: name.clone(),
                path: child,
                node,
                fixed,
            });
        }
        Ok(entries)
    }
}
