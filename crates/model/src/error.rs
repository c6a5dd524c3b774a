//! The crate's one error type, in the user's words, and its classes.
//! `Error::class` is the single place every front end (D-Bus, CLI) maps errors from.

use std::io;
use std::path::PathBuf;

/// Result with the crate's error.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in vgpud. Messages are short sentences; the source of an
/// error (if any) is printed by whoever walks the chain, never repeated here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid UUID {0:?}: expected the form 01234567-89ab-cdef-0123-456789abcdef")]
    InvalidUuid(String),

    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("no parent device named {0}")]
    UnknownParent(String),

    #[error("parent {parent} has no type {type_id}")]
    UnknownType { parent: String, type_id: String },

    #[error("no device with UUID {0}")]
    UnknownDevice(String),

    #[error("a device with UUID {0} already exists")]
    AlreadyExists(String),

    #[error("a device with UUID {0} is defined already: start it instead")]
    AlreadyDefined(String),

    #[error("device {0} is started already")]
    AlreadyStarted(String),

    #[error("{0} exists already")]
    FileExists(PathBuf),

    #[error("device {uuid} is defined on parent {parent} already")]
    DefinedOnParent { uuid: String, parent: String },

    #[error(
        "no capacity for type {type_id} on parent {parent} (the driver said {})",
        errno_name(*errno)
    )]
    NoCapacity {
        parent: String,
        type_id: String,
        errno: i32,
    },

    #[error("parent {0} is going away")]
    ParentGoingAway(String),

    #[error(
        "the driver refused the request (errno {errno}: {}){}",
        errno_name(*errno),
        hint.map(|h| format!("; {h}")).unwrap_or_default()
    )]
    DriverRefused {
        errno: i32,
        hint: Option<&'static str>,
    },

    /// The whole sentence: what is busy and, where known, who holds it.
    #[error("{0}")]
    Busy(String),

    /// The string is a whole sentence, it may carry the hint the user needs.
    #[error("{0}")]
    Unsupported(String),

    #[error("{} resolves outside the sysfs root", .0.display())]
    OutsideRoot(PathBuf),

    /// A kernel attribute that is missing or does not hold what the ABI promises.
    #[error("unexpected content in {}: {problem}", path.display())]
    BadAttribute { path: PathBuf, problem: String },

    #[error("I/O error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{what} timed out")]
    TimedOut { what: String },

    #[error("access denied: {0}")]
    AccessDenied(String),

    #[error("denied by policy rule {rule}: {reason}")]
    PolicyDenied { rule: String, reason: String },

    #[error("{0}")]
    Failed(String),

    #[error("no parent offers a type with id or name {0:?}")]
    NoSuchType(String),

    /// Something named in the request does not exist; the string is the whole sentence.
    #[error("{0}")]
    Missing(String),

    #[error("no parent has room for another {0:?} device")]
    NoCapacityAnywhere(String),
}

/// The coarse kind of an error, as front ends report it (D-Bus `org.vgpud1.Error.<class>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    NoCapacity,
    Busy,
    AccessDenied,
    PolicyDenied,
    Unsupported,
    Failed,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::InvalidArgument => "InvalidArgument",
            ErrorClass::NotFound => "NotFound",
            ErrorClass::AlreadyExists => "AlreadyExists",
            ErrorClass::NoCapacity => "NoCapacity",
            ErrorClass::Busy => "Busy",
            ErrorClass::AccessDenied => "AccessDenied",
            ErrorClass::PolicyDenied => "PolicyDenied",
            ErrorClass::Unsupported => "Unsupported",
            ErrorClass::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    /// The class of this error. Exhaustive on purpose: a new variant must choose its class here.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidUuid(_) => ErrorClass::InvalidArgument,
            Error::InvalidName { .. } => ErrorClass::InvalidArgument,
            Error::InvalidArgument(_) => ErrorClass::InvalidArgument,
            Error::UnknownParent(_) => ErrorClass::NotFound,
            Error::UnknownType { .. } => ErrorClass::NotFound,
            Error::UnknownDevice(_) => ErrorClass::NotFound,
            Error::AlreadyExists(_) => ErrorClass::AlreadyExists,
            Error::AlreadyDefined(_) => ErrorClass::AlreadyExists,
            Error::AlreadyStarted(_) => ErrorClass::AlreadyExists,
            Error::FileExists(_) => ErrorClass::AlreadyExists,
            Error::DefinedOnParent { .. } => ErrorClass::AlreadyExists,
            Error::NoCapacity { .. } => ErrorClass::NoCapacity,
            // The parent is disappearing: to the caller it is (about to be) not there.
            Error::ParentGoingAway(_) => ErrorClass::NotFound,
            Error::DriverRefused { .. } => ErrorClass::Failed,
            Error::Busy(_) => ErrorClass::Busy,
            Error::Unsupported(_) => ErrorClass::Unsupported,
            Error::OutsideRoot(_) => ErrorClass::Failed,
            Error::BadAttribute { .. } => ErrorClass::Failed,
            Error::Io { .. } => ErrorClass::Failed,
            // A bound on a blocking kernel call ran out; the state is unknown until reconciled.
            Error::TimedOut { .. } => ErrorClass::Failed,
            Error::AccessDenied(_) => ErrorClass::AccessDenied,
            Error::PolicyDenied { .. } => ErrorClass::PolicyDenied,
            Error::Failed(_) => ErrorClass::Failed,
            Error::NoSuchType(_) => ErrorClass::NotFound,
            Error::Missing(_) => ErrorClass::NotFound,
            Error::NoCapacityAnywhere(_) => ErrorClass::NoCapacity,
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An attribute at `path` that is missing or malformed.
    pub fn bad_attribute(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::BadAttribute {
            path: path.into(),
            problem: problem.into(),
        }
    }
}

/// The symbolic name of an errno value ("EINVAL"), or "unknown errno".
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ELOOP => "ELOOP",
        libc::EUSERS => "EUSERS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECANCELED => "ECANCELED",
        EPROBE_DEFER => "EPROBE_DEFER",
        _ => "unknown errno",
    }
}

/// Kernel-internal "probe deferred" (not in libc); it sometimes leaks to user space from driver stores.
pub const EPROBE_DEFER: i32 = 517;

#[cfg(test)]
mod tests {
    use super::*;

    // Seen on the real kernel: a duplicate create said "... exists already exists", because the
    // manager put its own words into the UUID slot of a sentence that already had them.
    #[test]
    fn each_already_exists_message_says_it_once() {
        const U: &str = "83b8f4f2-509f-482f-9c1e-e6bfe0fa1001";
        let cases = [
            (
                Error::AlreadyExists(U.into()),
                format!("a device with UUID {U} already exists"),
            ),
            (
                Error::AlreadyDefined(U.into()),
                format!("a device with UUID {U} is defined already: start it instead"),
            ),
            (
                Error::AlreadyStarted(U.into()),
                format!("device {U} is started already"),
            ),
            (
                Error::FileExists("/etc/mdevctl.d/mtty/x".into()),
                "/etc/mdevctl.d/mtty/x exists already".into(),
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.class(), ErrorClass::AlreadyExists);
        }
    }

    #[test]
    fn no_capacity_message_names_type_parent_and_errno() {
        let e = Error::NoCapacity {
            parent: "0000:3b:00.0".into(),
            type_id: "nvidia-231".into(),
            errno: libc::EINVAL,
        };
        assert_eq!(
            e.to_string(),
            "no capacity for type nvidia-231 on parent 0000:3b:00.0 (the driver said EINVAL)"
        );
        assert_eq!(e.class(), ErrorClass::NoCapacity);
    }

    #[test]
    fn driver_refused_message_carries_errno_and_hint() {
        let e = Error::DriverRefused {
            errno: libc::EAGAIN,
            hint: Some("probe deferred; try again"),
        };
        assert_eq!(
            e.to_string(),
            "the driver refused the request (errno 11: EAGAIN); probe deferred; try again"
        );
        let e = Error::DriverRefused {
            errno: libc::EIO,
            hint: None,
        };
        assert_eq!(
            e.to_string(),
            "the driver refused the request (errno 5: EIO)"
        );
    }

    #[test]
    fn io_message_does_not_repeat_its_source() {
        let e = Error::io("/sys/x", io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.to_string(), "I/O error on /sys/x");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EUSERS), "EUSERS");
        assert_eq!(errno_name(libc::ENOSPC), "ENOSPC");
        assert_eq!(errno_name(517), "EPROBE_DEFER");
        assert_eq!(errno_name(-1), "unknown errno");
    }

    #[test]
    fn classes_have_dbus_names() {
        assert_eq!(ErrorClass::NotFound.as_str(), "NotFound");
        assert_eq!(
            Error::UnknownDevice("x".into()).class().as_str(),
            "NotFound"
        );
        assert_eq!(Error::Busy("device x".into()).class(), ErrorClass::Busy);
    }
}
