//! vgpuctl's errors: a class that decides the exit code, a message in plain words and, when the
//! daemon or the bus answered, the D-Bus error name. D-Bus errors are classified here only.

use std::fmt;

use zbus::DBusError;

use vgpud_api::names::ERROR_PREFIX;

/// What went wrong, coarsely; each class has one documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Usage,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    NoCapacity,
    Busy,
    Denied,
    Unsupported,
    Unreachable,
    Other,
}

impl Class {
    /// The exit codes documented in `cli` (module docs and `vgpuctl --help`).
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Other => 1,
            Class::Usage => 2,
            Class::InvalidArgument => 3,
            Class::NotFound => 4,
            Class::AlreadyExists => 5,
            Class::NoCapacity => 6,
            Class::Busy => 7,
            Class::Denied => 8,
            Class::Unsupported => 9,
            Class::Unreachable => 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub class: Class,
    pub message: String,
    /// The D-Bus error name, when the error came from the bus or the daemon.
    pub dbus_name: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.dbus_name {
            Some(name) => write!(f, "{} ({name})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CliError {}

impl CliError {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        CliError {
            class,
            message: message.into(),
            dbus_name: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Class::Usage, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Class::InvalidArgument, message)
    }

    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Class::Other, message)
    }

    /// Puts `context` in front of the message: "context: message".
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The error of a bus call on `bus` (said in words, e.g. "the system bus").
    pub fn from_zbus(e: zbus::Error, bus: &str) -> Self {
        match e {
            zbus::Error::MethodError(name, description, _) => {
                from_name(name.as_str(), description.unwrap_or_default(), bus)
            }
            zbus::Error::FDO(fdo) => from_name(
                fdo.name().as_str(),
                fdo.description().unwrap_or_default().to_owned(),
                bus,
            ),
            zbus::Error::InputOutput(io) => unreachable_on(bus, &io.to_string()),
            zbus::Error::Connection(io, _) => unreachable_on(bus, &io.to_string()),
            zbus::Error::Address(text) => {
                unreachable_on(bus, &format!("the bus address is not valid: {text}"))
            }
            zbus::Error::Handshake(text) => unreachable_on(bus, &text),
            other => CliError::other(other.to_string()),
        }
    }
}

fn unreachable_on(bus: &str, why: &str) -> CliError {
    CliError::new(
        Class::Unreachable,
        format!("vgpud is not running on {bus} (cannot connect to the bus: {why})"),
    )
}

/// Classifies an error by its D-Bus name; `description` is the text that came with it.
fn from_name(name: &str, description: String, bus: &str) -> CliError {
    let class = match name
        .strip_prefix(ERROR_PREFIX)
        .and_then(|s| s.strip_prefix('.'))
    {
        Some("InvalidArgument") => Class::InvalidArgument,
        Some("NotFound") => Class::NotFound,
        Some("AlreadyExists") => Class::AlreadyExists,
        Some("NoCapacity") => Class::NoCapacity,
        Some("Busy") => Class::Busy,
        Some("AccessDenied") | Some("PolicyDenied") => Class::Denied,
        Some("Unsupported") => Class::Unsupported,
        Some(_) => Class::Other,
        None => return from_bus_name(name, description, bus),
    };
    CliError {
        class,
        message: description,
        dbus_name: Some(name.to_owned()),
    }
}

/// Errors the bus itself (or zbus) answers with, rather than vgpud.
fn from_bus_name(name: &str, description: String, bus: &str) -> CliError {
    let short = name.rsplit('.').next().unwrap_or(name);
    let (class, message) = match short {
        "ServiceUnknown" | "NameHasNoOwner" => {
            (Class::Unreachable, format!("vgpud is not running on {bus}"))
        }
        "NoReply" | "Timeout" | "TimedOut" => (
            Class::Unreachable,
            format!("vgpud did not answer on {bus}: {description}"),
        ),
        "Disconnected" | "NoServer" => (
            Class::Unreachable,
            format!("lost the connection to {bus}: {description}"),
        ),
        "AccessDenied" | "AuthFailed" | "InteractiveAuthorizationRequired" => (
            Class::Denied,
            format!("the bus refused the call: {description}"),
        ),
        "InvalidArgs" => (Class::InvalidArgument, description),
        "UnknownObject" => (
            Class::NotFound,
            format!("the object is gone: {description}"),
        ),
        "UnknownMethod" | "UnknownInterface" | "UnknownProperty" => (
            Class::Other,
            format!("vgpud does not offer this call (an older daemon?): {description}"),
        ),
        _ => (Class::Other, description),
    };
    CliError {
        class,
        message,
        dbus_name: Some(name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method_error(name: &str, text: &str) -> CliError {
        from_name(name, text.to_owned(), "the system bus")
    }

    #[test]
    fn vgpud_errors_map_to_their_exit_codes() {
        let cases = [
            ("InvalidArgument", 3),
            ("NotFound", 4),
            ("AlreadyExists", 5),
            ("NoCapacity", 6),
            ("Busy", 7),
            ("AccessDenied", 8),
            ("PolicyDenied", 8),
            ("Unsupported", 9),
            ("Failed", 1),
            ("SomethingNew", 1),
        ];
        for (name, code) in cases {
            let e = method_error(&format!("org.vgpud1.Error.{name}"), "x");
            assert_eq!(e.class.exit_code(), code, "{name}");
        }
    }

    #[test]
    fn message_names_the_dbus_error() {
        let e = method_error(
            "org.vgpud1.Error.NotFound",
            "no parent offers a type with id or name \"X\"",
        );
        assert_eq!(
            e.to_string(),
            "no parent offers a type with id or name \"X\" (org.vgpud1.Error.NotFound)"
        );
    }

    #[test]
    fn a_missing_daemon_is_unreachable() {
        let e = method_error("org.freedesktop.DBus.Error.ServiceUnknown", "whatever");
        assert_eq!(e.class, Class::Unreachable);
        assert!(e
            .message
            .starts_with("vgpud is not running on the system bus"));
        let e = method_error("org.freedesktop.DBus.Error.NoReply", "timeout");
        assert_eq!(e.class.exit_code(), 10);
    }

    #[test]
    fn io_errors_are_unreachable() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = CliError::from_zbus(zbus::Error::InputOutput(io.into()), "the system bus");
        assert_eq!(e.class.exit_code(), 10);
        assert!(e.message.contains("not running on the system bus"), "{e}");
    }

    #[test]
    fn context_goes_first() {
        let e = CliError::invalid("bad").context("domain x");
        assert_eq!(e.to_string(), "domain x: bad");
    }
}
