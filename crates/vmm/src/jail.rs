//! The VMM's jail: the step that leaves root behind — an empty mount namespace, every
//! capability set cleared, the unprivileged uid and gid, no_new_privs. (Who it becomes and the
//! files it takes by descriptor are the launch contract's: vgpud-launch.)

use std::ffi::CString;

pub use vgpud_launch::{FileArg, Jail};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail's uid and gid must not be 0")]
    Root,
    #[error("jail: {0} failed")]
    Call(&'static str, #[source] std::io::Error),
}

fn check(what: &'static str, ret: libc::c_int) -> Result<(), JailError> {
    if ret < 0 {
        return Err(JailError::Call(what, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Where the empty root is mounted before it becomes `/`; any directory of the host serves,
/// since the mount is private to the VMM's namespace.
const STAGE: &str = "/tmp";

/// Enters the jail: from here on nothing of the host's file system is reachable and the process
/// holds no privilege. Needs root (CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID, CAP_SETPCAP).
pub fn enter(jail: Jail) -> Result<(), JailError> {
    if jail.uid == 0 || jail.gid == 0 {
        return Err(JailError::Root);
    }
    empty_root()?;
    drop_privileges(jail)
}

fn empty_root() -> Result<(), JailError> {
    let c = |s: &str| CString::new(s).expect("no NUL in a constant");
    let (root, stage, tmpfs, dot) = (c("/"), c(STAGE), c("tmpfs"), c("."));
    // SAFETY: plain syscalls on NUL-terminated constant strings that outlive the calls.
    unsafe {
        check("unshare(CLONE_NEWNS)", libc::unshare(libc::CLONE_NEWNS))?;
        check(
            "making mounts private",
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
        )?;
        let opts = c("size=4k,nr_inodes=1,mode=0555");
        check(
            "mounting the empty root",
            libc::mount(
                tmpfs.as_ptr(),
                stage.as_ptr(),
                tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                opts.as_ptr().cast(),
            ),
        )?;
        check("chdir to the empty root", libc::chdir(stage.as_ptr()))?;
        // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
        // the empty tmpfs. Where pivot_root is refused, chroot (escapable only with
        // CAP_SYS_CHROOT, which is dropped next) confines as well.
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
            check(
                "detaching the old root",
                libc::umount2(dot.as_ptr(), libc::MNT_DETACH),
            )?;
        } else {
            check("chroot", libc::chroot(dot.as_ptr()))?;
        }
        check("chdir /", libc::chdir(root.as_ptr()))?;
        check(
            "making the root read-only",
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ),
        )?;
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn drop_privileges(jail: Jail) -> Result<(), JailError> {
    // SAFETY: prctl, setgroups, setres[ug]id and capset with valid arguments; the capset
    // structures live on this stack frame for the duration of the call.
    unsafe {
        // The bounding set needs CAP_SETPCAP, so it goes before the uid changes.
        for cap in 0..64 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break; // past the kernel's last capability
                }
                return Err(JailError::Call("PR_CAPBSET_DROP", e));
            }
        }
        check(
            "clearing ambient capabilities",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
        )?;
        check("setgroups", libc::setgroups(0, std::ptr::null()))?;
        check("setresgid", libc::setresgid(jail.gid, jail.gid, jail.gid))?;
        check("setresuid", libc::setresuid(jail.uid, jail.uid, jail.uid))?;
        // setresuid cleared the permitted and effective sets; the inheritable one stays.
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(
            "capset",
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) as libc::c_int,
        )?;
        check(
            "PR_SET_NO_NEW_PRIVS",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_args_parse() {
        assert_eq!("fd:7".parse::<FileArg>(), Ok(FileArg::Fd(7)));
        assert_eq!(
            "/boot/vmlinuz".parse::<FileArg>(),
            Ok(FileArg::Path("/boot/vmlinuz".into()))
        );
        for bad in ["", "fd:", "fd:-1", "fd:x"] {
            assert!(bad.parse::<FileArg>().is_err(), "{bad}");
        }
        assert_eq!(FileArg::Fd(3).to_string(), "fd:3");
    }

    #[test]
    fn a_closed_descriptor_is_an_error() {
        let err = FileArg::Fd(999_999).open().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn an_adopted_descriptor_is_the_one_given_not_a_copy() {
        use std::io::Read;
        use std::os::fd::{AsRawFd, IntoRawFd};
        let (mut read, write) = std::io::pipe().unwrap();
        let fd = write.into_raw_fd();
        let file = FileArg::Fd(fd).adopt().unwrap();
        assert_eq!(file.as_raw_fd(), fd);
        drop(file);
        // The pipe's only write end was the adopted one: its File closed it.
        let mut rest = Vec::new();
        assert_eq!(read.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn an_inherited_descriptor_reads_from_where_it_stands() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut tmp = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut tmp, b"abc").unwrap();
        std::io::Seek::rewind(&mut tmp).unwrap();
        let mut text = String::new();
        FileArg::Fd(tmp.as_raw_fd())
            .open()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "abc");
    }

    #[test]
    fn root_is_no_jail() {
        assert!(matches!(
            enter(Jail { uid: 0, gid: 65534 }),
            Err(JailError::Root)
        ));
    }
}
