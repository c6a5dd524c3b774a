//! The bouncer's polkit half: asks the polkit authority whether the CALLER (a system-bus-name
//! subject taken from the message header, never the daemon itself) may perform an action.
//! With no authority on the bus, only root is allowed, and the daemon says why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use zbus::zvariant::Value;
use zbus::Connection;

use crate::manager::Caller;
use vgpud_model::error::{Error, Result};
use vgpud_policy::Action;

pub const POLKIT_NAME: &str = "org.freedesktop.PolicyKit1";
const POLKIT_PATH: &str = "/org/freedesktop/PolicyKit1/Authority";
const POLKIT_IFACE: &str = "org.freedesktop.PolicyKit1.Authority";
/// CheckAuthorizationFlags.AllowUserInteraction.
const ALLOW_USER_INTERACTION: u32 = 1;

/// The polkit subject for a caller on the bus.
pub fn subject(bus_name: &str) -> (&'static str, HashMap<&'static str, Value<'_>>) {
    (
        "system-bus-name",
        HashMap::from([("name", Value::from(bus_name))]),
    )
}

pub struct Authority {
    conn: Connection,
    warned_missing: AtomicBool,
    /// Whether an authority is there, as last asked (None: ask the bus); forgotten whenever
    /// polkit's name changes owner.
    present: std::sync::Mutex<Option<bool>>,
}

impl Authority {
    pub fn new(conn: Connection) -> Self {
        Self {
            conn,
            warned_missing: AtomicBool::new(false),
            present: std::sync::Mutex::new(None),
        }
    }

    /// polkit's name changed owner: ask the bus again next time.
    pub fn forget_presence(&self) {
        *self.present.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Is an authority there (running, or activatable on demand)? Asked of the bus once, then
    /// remembered until polkit's name changes owner.
    async fn present(&self) -> bool {
        if let Some(known) = *self.present.lock().unwrap_or_else(|p| p.into_inner()) {
            return known;
        }
        let present = self.ask_present().await;
        *self.present.lock().unwrap_or_else(|p| p.into_inner()) = Some(present);
        present
    }

    async fn ask_present(&self) -> bool {
        let Ok(dbus) = zbus::fdo::DBusProxy::new(&self.conn).await else {
            return false;
        };
        let name = match zbus::names::BusName::try_from(POLKIT_NAME) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if dbus.name_has_owner(name).await.unwrap_or(false) {
            return true;
        }
        dbus.list_activatable_names()
            .await
            .map(|names| names.iter().any(|n| n.as_str() == POLKIT_NAME))
            .unwrap_or(false)
    }

    /// Ok when `caller` may perform `action`; AccessDenied naming the action otherwise.
    pub async fn check(&self, caller: &Caller, action: Action) -> Result<()> {
        if caller.uid == Some(0) {
            return Ok(());
        }
        let Some(bus_name) = caller.bus_name.as_deref() else {
            return Err(Error::AccessDenied(format!(
                "{}: the caller is unknown",
                action.polkit_id()
            )));
        };
        if !self.present().await {
            if !self.warned_missing.swap(true, Ordering::Relaxed) {
                tracing::warn!("no polkit authority on the bus: only root may change anything");
            }
            return Err(Error::AccessDenied(format!(
                "{} needs root: there is no polkit authority to ask about uid {}",
                action.polkit_id(),
                caller.uid.map_or("?".to_owned(), |u| u.to_string())
            )));
        }
        let flags = if caller.interactive {
            ALLOW_USER_INTERACTION
        } else {
            0
        };
        let details: HashMap<&str, &str> = HashMap::new();
        let reply = self
            .conn
            .call_method(
                Some(POLKIT_NAME),
                POLKIT_PATH,
                Some(POLKIT_IFACE),
                "CheckAuthorization",
                &(subject(bus_name), action.polkit_id(), details, flags, ""),
            )
            .await
            .map_err(|e| {
                Error::AccessDenied(format!(
                    "{}: polkit did not answer: {e}",
                    action.polkit_id()
                ))
            })?;
        let (authorized, challenge, _details): (bool, bool, HashMap<String, String>) =
            reply.body().deserialize().map_err(|e| {
                Error::AccessDenied(format!(
                    "{}: polkit's answer was malformed: {e}",
                    action.polkit_id()
                ))
            })?;
        if authorized {
            Ok(())
        } else if challenge {
            Err(Error::AccessDenied(format!(
                "{} needs authentication: retry with interactive authorization allowed",
                action.polkit_id()
            )))
        } else {
            Err(Error::AccessDenied(format!(
                "polkit refused {} for uid {}",
                action.polkit_id(),
                caller.uid.unwrap_or(u32::MAX)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_are_the_declared_ones() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../policies/org.vgpud.policy");
        let declared = std::fs::read_to_string(&file).expect("policies/org.vgpud.policy exists");
        for a in Action::ALL {
            assert!(
                declared.contains(&format!("<action id=\"{}\">", a.polkit_id())),
                "{} not declared",
                a.polkit_id()
            );
        }
    }

    #[test]
    fn subject_is_the_callers_bus_name() {
        let (kind, details) = subject(":1.42");
        assert_eq!(kind, "system-bus-name");
        assert_eq!(details.get("name"), Some(&Value::from(":1.42")));
    }
}
