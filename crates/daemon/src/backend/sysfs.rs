//! Typed reads and writes of kernel attributes under one injected sysfs root.
//! Paths are built only from fixed literals and validated model names, and every open goes
//! through openat2(RESOLVE_BENEATH) from the root's directory: the kernel itself refuses any
//! resolution (`..`, a symlink) that would leave the root, in one system call per access.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};

use vgpud_model::error::{Error, Result};
use vgpud_model::{MdevUuid, ParentName, TypeId};

/// Attributes are at most a page in practice; anything near this is not an attribute.
pub const ATTR_MAX: usize = 64 * 1024;

/// The sysfs root ("/sys" in production, a simulator mount or a fixture in tests).
/// Cheap to clone and shareable across threads.
#[derive(Debug, Clone)]
pub struct SysfsRoot(Arc<RootInner>);

#[derive(Debug)]
struct RootInner {
    given: PathBuf,
    canonical: PathBuf,
    /// The root directory, opened once; every access resolves beneath it.
    dir: OwnedFd,
}

/// How an access under the root ended, before it is given a domain meaning.
enum Beneath {
    Opened(fs::File),
    Missing,
    Outside,
}

/// One piece of a sysfs path: a validated model name or a fixed literal.
pub trait PathPart {
    fn push_onto(&self, path: &mut PathBuf);
}

impl PathPart for ParentName {
    fn push_onto(&self, path: &mut PathBuf) {
        path.push(self.as_str());
    }
}

impl PathPart for TypeId {
    fn push_onto(&self, path: &mut PathBuf) {
        path.push(self.as_str());
    }
}

impl PathPart for MdevUuid {
    fn push_onto(&self, path: &mut PathBuf) {
        path.push(self.to_string());
    }
}

/// A name taken from a directory listing (e.g. "virtfn3"), checked to be one path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryName(String);

impl EntryName {
    pub fn new(name: &str) -> Result<Self> {
        vgpud_model::validate_name("directory entry", name)?;
        Ok(EntryName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PathPart for EntryName {
    fn push_onto(&self, path: &mut PathBuf) {
        path.push(&self.0);
    }
}

/// Literals are written in this crate's source ("mdev_supported_types", "nvidia/current_vgpu_type").
impl PathPart for &'static str {
    fn push_onto(&self, path: &mut PathBuf) {
        path.push(self);
    }
}

/// A path under the root, built from `PathPart`s. Not yet resolved: it may name a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysPath(PathBuf);

impl SysPath {
    /// This path with one more part.
    pub fn join(&self, part: impl PathPart) -> SysPath {
        let mut p = self.0.clone();
        part.push_onto(&mut p);
        SysPath(p)
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for SysPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// Why a single write to an attribute failed; open and write errno are kept apart because
/// the kernel means different things by them (ENOENT at open: no such type; at write: driver).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the attribute resolves outside the sysfs root")]
    OutsideRoot(PathBuf),
    #[error("cannot open the attribute")]
    Open(#[source] io::Error),
    #[error("the write was refused")]
    Write(#[source] io::Error),
    #[error("the kernel took {written} of {expected} bytes")]
    Short { written: usize, expected: usize },
}

impl WriteError {
    /// The errno of a failed open.
    pub fn open_errno(&self) -> Option<i32> {
        match self {
            WriteError::Open(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The errno of a failed write.
    pub fn write_errno(&self) -> Option<i32> {
        match self {
            WriteError::Write(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The plain mapping, for errors a caller has no domain meaning for.
    pub fn into_error(self, path: &Path) -> Error {
        match self {
            WriteError::OutsideRoot(p) => Error::OutsideRoot(p),
            WriteError::Open(e) | WriteError::Write(e) => Error::io(path, e),
            WriteError::Short { written, expected } => Error::Failed(format!(
                "the kernel took {written} of {expected} bytes written to {}",
                path.display()
            )),
        }
    }
}

impl SysfsRoot {
    /// A root at `path`, which must exist.
    pub fn new(path: impl Into<PathBuf>) -> Result<Self> {
        let given = path.into();
        let canonical = fs::canonicalize(&given).map_err(|e| Error::io(&given, e))?;
        let dir = fs::File::open(&canonical).map_err(|e| Error::io(&given, e))?;
        Ok(SysfsRoot(Arc::new(RootInner {
            given,
            canonical,
            dir: dir.into(),
        })))
    }

    /// The production root, /sys.
    pub fn system() -> Result<Self> {
        SysfsRoot::new("/sys")
    }

    /// The root as it was given.
    pub fn path(&self) -> &Path {
        &self.0.given
    }

    /// The root with every symlink resolved; all resolved paths must start with it.
    pub fn canonical(&self) -> &Path {
        &self.0.canonical
    }

    /// A path under the root: `literal` is fixed text such as "class/mdev_bus".
    pub fn at(&self, literal: &'static str) -> SysPath {
        SysPath(self.0.canonical.join(literal))
    }

    /// Opens `path` (under the root) with `flags`, resolving strictly beneath the root.
    fn open_beneath(&self, path: &Path, flags: OFlag) -> io::Result<Beneath> {
        let rel = match path.strip_prefix(&self.0.canonical) {
            Ok(r) if r.as_os_str().is_empty() => Path::new("."),
            Ok(r) => r,
            Err(_) => return Ok(Beneath::Outside),
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // EAGAIN: a rename or mount elsewhere on the system raced with a `..` in the walk and
        // the kernel could not prove it stayed beneath the root; the walk is simply retried.
        let mut attempts = 0;
        loop {
            match nix::fcntl::openat2(self.0.dir.as_raw_fd(), rel, how) {
                // SAFETY: openat2 returned a new descriptor that nothing else owns.
                Ok(fd) => return Ok(Beneath::Opened(unsafe { fs::File::from_raw_fd(fd) })),
                Err(nix::errno::Errno::EXDEV) => return Ok(Beneath::Outside),
                Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
                    return Ok(Beneath::Missing)
                }
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) if attempts < 8 => {
                    attempts += 1;
                    std::thread::yield_now();
                }
                // Renames elsewhere keep racing the walk (a busy host, a slow FUSE tree):
                // resolve in user space instead and check the result lexically.
                Err(nix::errno::Errno::EAGAIN) => return self.open_checked(path, flags),
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// The fallback of `open_beneath`: canonicalize, check containment, open what was checked.
    fn open_checked(&self, path: &Path, flags: OFlag) -> io::Result<Beneath> {
        let real = match fs::canonicalize(path) {
            Ok(r) => r,
            Err(e) if is_missing(&e) => return Ok(Beneath::Missing),
            Err(e) => return Err(e),
        };
        if !self.contains(&real) {
            return Ok(Beneath::Outside);
        }
        let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        match nix::fcntl::open(&real, flags, nix::sys::stat::Mode::empty()) {
            // SAFETY: open returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(Beneath::Opened(unsafe { fs::File::from_raw_fd(fd) })),
            Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
                Ok(Beneath::Missing)
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// The canonical path of an open descriptor (from /proc/self/fd).
    fn path_of(file: &fs::File) -> io::Result<PathBuf> {
        fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }

    /// Whether `path` is inside the root, once `..` and `.` are applied lexically.
    fn contains(&self, path: &Path) -> bool {
        normalize(path).starts_with(&self.0.canonical)
    }

    /// `path` with every symlink resolved, checked to be inside the root; `None` if it (or a
    /// link on the way) does not exist.
    pub fn resolve(&self, path: &SysPath) -> Result<Option<PathBuf>> {
        match self.open_beneath(&path.0, OFlag::O_PATH) {
            Ok(Beneath::Opened(f)) => {
                let real = Self::path_of(&f).map_err(|e| Error::io(&path.0, e))?;
                if self.contains(&real) {
                    Ok(Some(real))
                } else {
                    Err(Error::OutsideRoot(path.0.clone()))
                }
            }
            Ok(Beneath::Missing) => Ok(None),
            Ok(Beneath::Outside) => Err(Error::OutsideRoot(path.0.clone())),
            Err(e) => Err(Error::io(&path.0, e)),
        }
    }

    /// A path `resolve` returned (a real directory under the root, no link on the way), to
    /// build on without walking links again; `None` for anything outside the root.
    pub fn resolved(&self, real: &Path) -> Option<SysPath> {
        self.contains(real).then(|| SysPath(real.to_path_buf()))
    }

    /// Whether `path` exists (after resolving links inside the root).
    pub fn exists(&self, path: &SysPath) -> Result<bool> {
        Ok(self.resolve(path)?.is_some())
    }

    /// The text of an attribute without its trailing newline(s); `None` when it does not exist.
    pub fn read_attr(&self, path: &SysPath) -> Result<Option<String>> {
        let mut file = match self.open_beneath(&path.0, OFlag::O_RDONLY) {
            Ok(Beneath::Opened(f)) => f,
            Ok(Beneath::Missing) => return Ok(None),
            Ok(Beneath::Outside) => return Err(Error::OutsideRoot(path.0.clone())),
            Err(e) => return Err(Error::io(&path.0, e)),
        };
        // A sysfs attribute is shown whole by its first read (at most a page): a short first
        // read is all of it, which saves the read that would only find the end (a round trip
        // each on a FUSE tree). Anything longer is read on to the end.
        let mut page = [0; PAGE];
        let first = read_retrying(&mut file, &mut page).map_err(|e| Error::io(&path.0, e))?;
        let mut bytes = page[..first].to_vec();
        if first == PAGE {
            file.take(ATTR_MAX as u64 + 1 - PAGE as u64)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io(&path.0, e))?;
        }
        if bytes.len() > ATTR_MAX {
            return Err(Error::bad_attribute(&path.0, "longer than 64 KiB"));
        }
        let mut text = String::from_utf8(bytes)
            .map_err(|_| Error::bad_attribute(&path.0, "not UTF-8 text"))?;
        let kept = text.trim_end_matches('\n').len();
        text.truncate(kept);
        Ok(Some(text))
    }

    /// A decimal attribute ("24\n").
    pub fn read_u32(&self, path: &SysPath) -> Result<Option<u32>> {
        self.read_parsed(path, "a decimal number", |s| s.parse().ok())
    }

    /// A signed decimal attribute ("-1\n" for numa_node).
    pub fn read_i32(&self, path: &SysPath) -> Result<Option<i32>> {
        self.read_parsed(path, "a signed decimal number", |s| s.parse().ok())
    }

    /// A hexadecimal attribute ("0x10de\n"); the "0x" prefix is optional.
    pub fn read_hex(&self, path: &SysPath) -> Result<Option<u32>> {
        self.read_parsed(path, "a hexadecimal number", parse_hex)
    }

    fn read_parsed<T>(
        &self,
        path: &SysPath,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(text) = self.read_attr(path)? else {
            return Ok(None);
        };
        let trimmed = text.trim();
        match parse(trimmed) {
            Some(v) => Ok(Some(v)),
            None => Err(Error::bad_attribute(
                &path.0,
                format!("expected {expected}, found {:?}", clip(trimmed)),
            )),
        }
    }

    /// The last component of what the symlink at `path` points to ("12" for an iommu_group
    /// link); `None` when there is no such link. The target must be inside the root.
    pub fn read_link_name(&self, path: &SysPath) -> Result<Option<String>> {
        let (Some(dir), Some(file)) = (path.0.parent(), path.0.file_name()) else {
            return Ok(None);
        };
        let Some(file) = file.to_str() else {
            return Ok(None);
        };
        let dir = SysPath(dir.to_path_buf());
        Ok(self
            .link_names(&dir, &[file])?
            .and_then(|mut names| names.pop().flatten()))
    }

    /// The last component of what each of the symlinks `names` in the directory `dir` points
    /// to, in order (`None` for a name that is no link there); `None` when `dir` does not
    /// exist. The directory is opened once. Only names are read from links (a type id, a group
    /// number, a driver), so a target is judged from the directory's canonical path without
    /// being opened: the kernel writes sysfs links as relative paths between canonical
    /// directories, and a target outside the root is refused, dangling or not.
    pub fn link_names(&self, dir: &SysPath, names: &[&str]) -> Result<Option<Vec<Option<String>>>> {
        let dir_fd = match self.open_beneath(&dir.0, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(Beneath::Opened(f)) => f,
            Ok(Beneath::Missing) => return Ok(None),
            Ok(Beneath::Outside) => return Err(Error::OutsideRoot(dir.0.clone())),
            Err(e) => return Err(Error::io(&dir.0, e)),
        };
        let mut dir_real = None;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.0.join(name);
            let target = match nix::fcntl::readlinkat(Some(dir_fd.as_raw_fd()), *name) {
                Ok(t) => PathBuf::from(t),
                Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::ENOTDIR) => {
                    out.push(None);
                    continue;
                }
                Err(nix::errno::Errno::EINVAL) => {
                    return Err(Error::bad_attribute(&path, "not a symbolic link"))
                }
                Err(e) => return Err(Error::io(&path, io::Error::from(e))),
            };
            let real = match &dir_real {
                Some(r) => r,
                None => dir_real.insert(Self::path_of(&dir_fd).map_err(|e| Error::io(&dir.0, e))?),
            };
            let last = normalize(&real.join(&target));
            if !self.contains(&last) {
                return Err(Error::OutsideRoot(path));
            }
            match last.file_name().and_then(|n| n.to_str()) {
                Some(n) => out.push(Some(n.to_owned())),
                None => {
                    return Err(Error::bad_attribute(
                        &path,
                        "link target has no UTF-8 last component",
                    ))
                }
            }
        }
        Ok(Some(out))
    }

    /// Names in the directory at `path`, sorted; empty when it does not exist.
    /// Names that are not UTF-8 are skipped with a warning (no sysfs name we use is).
    pub fn list_dir(&self, path: &SysPath) -> Result<Vec<String>> {
        let dir = match self.open_beneath(&path.0, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(Beneath::Opened(f)) => f,
            Ok(Beneath::Missing) => return Ok(Vec::new()),
            Ok(Beneath::Outside) => return Err(Error::OutsideRoot(path.0.clone())),
            Err(e) => return Err(Error::io(&path.0, e)),
        };
        // Listing through the open descriptor: what was checked is what is read.
        let entries = match fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) {
            Ok(rd) => rd,
            Err(e) if is_missing(&e) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&path.0, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&path.0, e))?;
            match entry.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(raw) => tracing::warn!(
                    dir = %path.0.display(),
                    name = ?raw,
                    "skipping a directory entry whose name is not UTF-8"
                ),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes `bytes` with exactly one write(2), without O_CREAT or O_TRUNC (sysfs attributes
    /// are not regular files). May block as long as the kernel does (e.g. `remove` while a VM
    /// holds the device): do not call it on an event loop.
    pub fn write_attr(&self, path: &SysPath, bytes: &[u8]) -> std::result::Result<(), WriteError> {
        let mut file = match self.open_beneath(&path.0, OFlag::O_WRONLY) {
            Ok(Beneath::Opened(f)) => f,
            Ok(Beneath::Missing) => {
                return Err(WriteError::Open(io::Error::from_raw_os_error(libc::ENOENT)))
            }
            Ok(Beneath::Outside) => return Err(WriteError::OutsideRoot(path.0.clone())),
            Err(e) => return Err(WriteError::Open(e)),
        };
        // One write: a store callback sees the whole value or nothing; no retry on EINTR, since
        // the kernel may have acted before it was interrupted.
        match file.write(bytes) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(WriteError::Short {
                written: n,
                expected: bytes.len(),
            }),
            Err(e) => Err(WriteError::Write(e)),
        }
    }
}

/// `path` with `.` and `..` applied lexically (for a path whose links are already resolved,
/// or a dangling link target, which has nothing left to resolve).
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                normal.pop();
            }
            Component::CurDir => {}
            other => normal.push(other),
        }
    }
    normal
}

/// ENOENT, and ENOTDIR (a path component is a file): both mean "no such attribute".
fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

fn parse_hex(s: &str) -> Option<u32> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// At most 64 characters of attribute text, for an error message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_owned(),
    }
}

/// What one read of a sysfs attribute returns at most.
const PAGE: usize = 4096;

/// One read, retried on EINTR.
fn read_retrying(file: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A tempdir with the root at `<tmp>/sys` and a secret at `<tmp>/outside/secret`.
    struct Fx {
        _tmp: tempfile::TempDir,
        sys: PathBuf,
        outside: PathBuf,
    }

    impl Fx {
        fn new() -> Self {
            let tmp = tempfile::tempdir().expect("tempdir");
            let sys = tmp.path().join("sys");
            let outside = tmp.path().join("outside");
            fs::create_dir_all(sys.join("devices/virtual/mtty/mtty")).unwrap();
            fs::create_dir_all(&outside).unwrap();
            fs::write(outside.join("secret"), "secret\n").unwrap();
            Fx {
                _tmp: tmp,
                sys,
                outside,
            }
        }
        fn write(&self, rel: &str, text: &str) {
            let p = self.sys.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fn link(&self, rel: &str, target: impl AsRef<Path>) {
            let p = self.sys.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, p).unwrap();
        }
        fn root(&self) -> SysfsRoot {
            SysfsRoot::new(&self.sys).unwrap()
        }
    }

    const DEV: &str = "devices/virtual/mtty/mtty";

    #[test]
    fn read_attr_trims_trailing_newline() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/name"), "Dual port serial\n");
        let r = fx.root();
        let p = r.at(DEV).join("name");
        assert_eq!(
            r.read_attr(&p).unwrap().as_deref(),
            Some("Dual port serial")
        );
    }

    #[test]
    fn read_attr_missing_is_none() {
        let fx = Fx::new();
        let r = fx.root();
        assert_eq!(r.read_attr(&r.at(DEV).join("nope")).unwrap(), None);
        assert_eq!(r.read_attr(&r.at("no/such/dir").join("x")).unwrap(), None);
    }

    #[test]
    fn read_attr_follows_links_inside_the_root() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/vendor"), "0x10de\n");
        fx.link("class/mdev_bus/mtty", "../../devices/virtual/mtty/mtty");
        let r = fx.root();
        let p = r.at("class/mdev_bus").join("mtty").join("vendor");
        assert_eq!(r.read_hex(&p).unwrap(), Some(0x10de));
    }

    #[test]
    fn read_attr_refuses_a_link_outside_the_root() {
        let fx = Fx::new();
        fx.link(&format!("{DEV}/evil"), fx.outside.join("secret"));
        let r = fx.root();
        let err = r.read_attr(&r.at(DEV).join("evil")).unwrap_err();
        assert!(matches!(err, Error::OutsideRoot(_)), "{err:?}");
    }

    #[test]
    fn read_attr_refuses_a_relative_link_climbing_out() {
        let fx = Fx::new();
        fx.link(&format!("{DEV}/evil"), "../../../../../outside/secret");
        let r = fx.root();
        let err = r.read_attr(&r.at(DEV).join("evil")).unwrap_err();
        assert!(matches!(err, Error::OutsideRoot(_)), "{err:?}");
    }

    #[test]
    fn read_attr_over_64k_is_an_error() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/big"), &"x".repeat(ATTR_MAX + 1));
        let r = fx.root();
        let err = r.read_attr(&r.at(DEV).join("big")).unwrap_err();
        assert!(matches!(err, Error::BadAttribute { .. }), "{err:?}");
    }

    #[test]
    fn malformed_number_names_the_path() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/available_instances"), "lots\n");
        let r = fx.root();
        let p = r.at(DEV).join("available_instances");
        let msg = r.read_u32(&p).unwrap_err().to_string();
        assert!(msg.contains("mtty/mtty/available_instances"), "{msg}");
        assert!(
            msg.contains("expected a decimal number, found \"lots\""),
            "{msg}"
        );
    }

    #[test]
    fn read_i32_accepts_minus_one() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/numa_node"), "-1\n");
        let r = fx.root();
        assert_eq!(r.read_i32(&r.at(DEV).join("numa_node")).unwrap(), Some(-1));
    }

    #[test]
    fn read_hex_refuses_garbage() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/class"), "0x\n");
        let r = fx.root();
        assert!(r.read_hex(&r.at(DEV).join("class")).is_err());
        assert_eq!(parse_hex("0x030000"), Some(0x030000));
        assert_eq!(parse_hex("10de"), Some(0x10de));
        assert_eq!(parse_hex("-1"), None);
    }

    #[test]
    fn read_link_name_gives_last_component() {
        let fx = Fx::new();
        fs::create_dir_all(fx.sys.join("kernel/iommu_groups/12")).unwrap();
        fx.link(
            &format!("{DEV}/iommu_group"),
            "../../../../kernel/iommu_groups/12",
        );
        let r = fx.root();
        let p = r.at(DEV).join("iommu_group");
        assert_eq!(r.read_link_name(&p).unwrap().as_deref(), Some("12"));
    }

    #[test]
    fn read_link_name_of_dangling_link_inside_root() {
        let fx = Fx::new();
        fx.link(
            &format!("{DEV}/driver"),
            "../../../../bus/mdev/drivers/mtty",
        );
        let r = fx.root();
        let p = r.at(DEV).join("driver");
        assert_eq!(r.read_link_name(&p).unwrap().as_deref(), Some("mtty"));
    }

    #[test]
    fn read_link_name_outside_root_is_refused() {
        let fx = Fx::new();
        fx.link(&format!("{DEV}/driver"), &fx.outside);
        fx.link(&format!("{DEV}/gone"), fx.outside.join("nothing-here"));
        let r = fx.root();
        for name in ["driver", "gone"] {
            let err = r.read_link_name(&r.at(DEV).join(name)).unwrap_err();
            assert!(matches!(err, Error::OutsideRoot(_)), "{name}: {err:?}");
        }
    }

    #[test]
    fn read_link_name_missing_is_none() {
        let fx = Fx::new();
        let r = fx.root();
        assert_eq!(r.read_link_name(&r.at(DEV).join("driver")).unwrap(), None);
    }

    #[test]
    fn list_dir_is_sorted_and_empty_when_missing() {
        let fx = Fx::new();
        fx.write("class/mdev_bus/b", "");
        fx.write("class/mdev_bus/a", "");
        let r = fx.root();
        assert_eq!(r.list_dir(&r.at("class/mdev_bus")).unwrap(), ["a", "b"]);
        assert!(r.list_dir(&r.at("bus/mdev/devices")).unwrap().is_empty());
    }

    #[test]
    fn list_dir_outside_root_is_refused() {
        let fx = Fx::new();
        fx.link("class/mdev_bus", &fx.outside);
        let r = fx.root();
        let err = r.list_dir(&r.at("class/mdev_bus")).unwrap_err();
        assert!(matches!(err, Error::OutsideRoot(_)), "{err:?}");
    }

    #[test]
    fn write_attr_writes_exact_bytes_without_creating() {
        let fx = Fx::new();
        fx.write(&format!("{DEV}/create"), "old content that is longer");
        let r = fx.root();
        let p = r.at(DEV).join("create");
        r.write_attr(&p, b"abc\n").unwrap();
        // No O_TRUNC: a plain file keeps its tail, a sysfs attribute has none.
        let got = fs::read_to_string(fx.sys.join(DEV).join("create")).unwrap();
        assert!(got.starts_with("abc\n"), "{got:?}");

        let err = r.write_attr(&r.at(DEV).join("absent"), b"1").unwrap_err();
        assert_eq!(err.open_errno(), Some(libc::ENOENT));
        assert!(!fx.sys.join(DEV).join("absent").exists());
    }

    #[test]
    fn write_attr_outside_root_is_refused() {
        let fx = Fx::new();
        fx.link(&format!("{DEV}/remove"), fx.outside.join("secret"));
        let r = fx.root();
        let err = r.write_attr(&r.at(DEV).join("remove"), b"1").unwrap_err();
        assert!(matches!(err, WriteError::OutsideRoot(_)), "{err:?}");
        let secret = fs::read_to_string(fx.outside.join("secret")).unwrap();
        assert_eq!(secret, "secret\n");
    }

    #[test]
    fn new_root_must_exist() {
        assert!(SysfsRoot::new("/nonexistent/vgpud-test-root").is_err());
    }
}
