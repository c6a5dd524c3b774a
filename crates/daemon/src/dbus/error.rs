//! The one place where vgpud's errors become D-Bus errors (`org.vgpud1.Error.<Class>`).

use vgpud_model::error::{Error, ErrorClass};

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.vgpud1.Error")]
pub enum VgpudError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgument(String),
    NotFound(String),
    AlreadyExists(String),
    NoCapacity(String),
    Busy(String),
    AccessDenied(String),
    PolicyDenied(String),
    Unsupported(String),
    Failed(String),
}

impl VgpudError {
    /// The error's class as in its D-Bus name (`Busy` of `org.vgpud1.Error.Busy`).
    pub fn class_name(&self) -> &'static str {
        match self {
            VgpudError::ZBus(_) => "ZBus",
            VgpudError::InvalidArgument(_) => "InvalidArgument",
            VgpudError::NotFound(_) => "NotFound",
            VgpudError::AlreadyExists(_) => "AlreadyExists",
            VgpudError::NoCapacity(_) => "NoCapacity",
            VgpudError::Busy(_) => "Busy",
            VgpudError::AccessDenied(_) => "AccessDenied",
            VgpudError::PolicyDenied(_) => "PolicyDenied",
            VgpudError::Unsupported(_) => "Unsupported",
            VgpudError::Failed(_) => "Failed",
        }
    }
}

/// The message with its whole source chain, since the D-Bus caller sees only this text.
fn message(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<Error> for VgpudError {
    fn from(e: Error) -> Self {
        let text = message(&e);
        match e.class() {
            ErrorClass::InvalidArgument => VgpudError::InvalidArgument(text),
            ErrorClass::NotFound => VgpudError::NotFound(text),
            ErrorClass::AlreadyExists => VgpudError::AlreadyExists(text),
            ErrorClass::NoCapacity => VgpudError::NoCapacity(text),
            ErrorClass::Busy => VgpudError::Busy(text),
            ErrorClass::AccessDenied => VgpudError::AccessDenied(text),
            ErrorClass::PolicyDenied => VgpudError::PolicyDenied(text),
            ErrorClass::Unsupported => VgpudError::Unsupported(text),
            ErrorClass::Failed => VgpudError::Failed(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn classes_map_to_versioned_names() {
        let e: VgpudError = Error::NoSuchType("GRID X".into()).into();
        assert_eq!(e.name().as_str(), "org.vgpud1.Error.NotFound");
        let e: VgpudError = Error::InvalidUuid("x".into()).into();
        assert_eq!(e.name().as_str(), "org.vgpud1.Error.InvalidArgument");
        let e: VgpudError = Error::Busy("device x".into()).into();
        assert_eq!(e.name().as_str(), "org.vgpud1.Error.Busy");
        assert!(e.description().unwrap_or_default().contains("device x"));
    }

    #[test]
    fn message_keeps_the_source_chain() {
        let e = Error::io("/sys/x", std::io::Error::from_raw_os_error(libc::EIO));
        let d: VgpudError = e.into();
        let text = d.description().unwrap_or_default().to_owned();
        assert!(
            text.contains("/sys/x") && text.contains("Input/output error"),
            "{text}"
        );
    }
}
