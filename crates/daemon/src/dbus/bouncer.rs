//! The bouncer: every method's call passes here first. One table says which polkit action each
//! method needs (the policy files then decide per parent, type and owner in the manager); the
//! caller behind a unique bus name is looked up once and remembered until that name leaves the
//! bus, so a call costs no bus round trip and no user database lookup of its own.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::StreamExt;
use zbus::message::Header;
use zbus::Connection;

use super::error::VgpudError;
use crate::dbus::authz::Authority;
use crate::manager::Caller;
use vgpud_policy::Action;

/// What a method asks of polkit before anything else happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A read: anyone on the bus may call it (the bus configuration still applies).
    Nothing,
    /// This action, always.
    Always(Action),
    /// The first always; the second too when the call's options ask for more (a persistent
    /// create also manages definitions; a reshape that drains also removes devices).
    AlwaysAndWhen(Action, Action),
}

/// Every method vgpud serves, by interface and name.
pub const TABLE: &[(&str, &str, Need)] = &[
    (
        "org.vgpud1.Manager",
        "CreateDevice",
        Need::AlwaysAndWhen(Action::CreateDevice, Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Manager",
        "DefineDevice",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Manager",
        "LaunchGuest",
        Need::Always(Action::LaunchGuest),
    ),
    ("org.vgpud1.Manager", "GetCapacity", Need::Nothing),
    ("org.vgpud1.Manager", "GetDevice", Need::Nothing),
    ("org.vgpud1.Manager", "Plan", Need::Nothing),
    (
        "org.vgpud1.Manager",
        "Reshape",
        Need::AlwaysAndWhen(Action::CreateDevice, Action::RemoveDevice),
    ),
    (
        "org.vgpud1.Manager",
        "ReloadPolicy",
        Need::Always(Action::ReloadPolicy),
    ),
    (
        "org.vgpud1.MdevType",
        "Create",
        Need::AlwaysAndWhen(Action::CreateDevice, Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Device",
        "Remove",
        Need::Always(Action::RemoveDevice),
    ),
    (
        "org.vgpud1.Device",
        "Start",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Device",
        "Stop",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Device",
        "Define",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Device",
        "Undefine",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Device",
        "SetAutostart",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Device",
        "Modify",
        Need::Always(Action::ManageDefinitions),
    ),
    (
        "org.vgpud1.Guest",
        "Stop",
        Need::Always(Action::LaunchGuest),
    ),
    (
        "org.vgpud1.Guest",
        "Forget",
        Need::Always(Action::LaunchGuest),
    ),
];

/// What the table says of a method; a method missing from it is a bug, refused.
pub fn need(interface: &str, method: &str) -> Option<Need> {
    TABLE
        .iter()
        .find(|(i, m, _)| *i == interface && *m == method)
        .map(|(_, _, n)| *n)
}

/// Who is behind a unique name, as the bus and the user database said when first asked.
#[derive(Debug, Clone, Default)]
struct Identity {
    uid: Option<u32>,
    user: Option<String>,
    groups: Vec<String>,
}

/// Remembered identities are dropped when their name leaves; this bounds what a lookup racing
/// a departure could leave behind.
const MAX_REMEMBERED: usize = 4096;

pub struct Bouncer {
    conn: Connection,
    authority: Authority,
    known: Mutex<HashMap<String, Identity>>,
}

impl Bouncer {
    pub fn new(conn: Connection) -> Self {
        Self {
            authority: Authority::new(conn.clone()),
            conn,
            known: Mutex::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Identity>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows names leaving the bus (callers forgotten) and polkit coming and going, until
    /// the connection closes.
    pub async fn watch(self: std::sync::Arc<Self>) {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .and_then(|b| b.interface("org.freedesktop.DBus"))
            .and_then(|b| b.member("NameOwnerChanged"))
            .map(|b| b.build());
        let Ok(rule) = rule else { return };
        // A deep queue of its own: zbus stops reading the connection while a stream's queue is
        // full, and clients coming and going in a storm must not stall method calls.
        let stream =
            zbus::MessageStream::for_match_rule(rule, &self.conn, Some(super::MAX_QUEUED)).await;
        let Ok(mut changes) = stream else { return };
        while let Some(Ok(msg)) = changes.next().await {
            let body = msg.body();
            let Ok((name, _old, new)) = body.deserialize::<(&str, &str, &str)>() else {
                continue;
            };
            if name == crate::dbus::authz::POLKIT_NAME {
                self.authority.forget_presence();
            } else if new.is_empty() {
                self.known().remove(name);
            }
        }
    }

    /// The caller of this message, from what was remembered or asked of the bus once.
    pub async fn caller(&self, hdr: &Header<'_>) -> Caller {
        let bus_name = hdr.sender().map(|s| s.to_string());
        let interactive = hdr
            .primary()
            .flags()
            .contains(zbus::message::Flags::AllowInteractiveAuth);
        let origin = format!("dbus:{}", bus_name.as_deref().unwrap_or("?"));
        let identity = match &bus_name {
            Some(name) => self.identity(name).await,
            None => Identity::default(),
        };
        Caller {
            bus_name,
            uid: identity.uid,
            user: identity.user,
            groups: identity.groups,
            interactive,
            origin,
        }
    }

    async fn identity(&self, name: &str) -> Identity {
        if let Some(known) = self.known().get(name) {
            return known.clone();
        }
        let uid = match (
            zbus::fdo::DBusProxy::new(&self.conn).await,
            zbus::names::BusName::try_from(name),
        ) {
            (Ok(proxy), Ok(bus_name)) => proxy.get_connection_unix_user(bus_name).await.ok(),
            _ => None,
        };
        let Some(uid) = uid else {
            // Not remembered: the name may be gone, or the bus may answer next time.
            return Identity::default();
        };
        let (user, groups) = tokio::task::spawn_blocking(move || super::args::user_and_groups(uid))
            .await
            .unwrap_or_default();
        let identity = Identity {
            uid: Some(uid),
            user,
            groups,
        };
        let mut known = self.known();
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(name.to_owned(), identity.clone());
        identity
    }

    /// The caller, once polkit allows what the table says `interface.method` always needs.
    pub async fn admit(
        &self,
        hdr: &Header<'_>,
        interface: &str,
        method: &str,
    ) -> Result<Caller, VgpudError> {
        let who = self.caller(hdr).await;
        match need(interface, method) {
            Some(Need::Nothing) => {}
            Some(Need::Always(a)) | Some(Need::AlwaysAndWhen(a, _)) => {
                self.authority.check(&who, a).await?
            }
            None => return Err(unlisted(interface, method)),
        }
        Ok(who)
    }

    /// The second action of `interface.method`, for a call whose options ask for it.
    pub async fn admit_more(
        &self,
        who: &Caller,
        interface: &str,
        method: &str,
    ) -> Result<(), VgpudError> {
        match need(interface, method) {
            Some(Need::AlwaysAndWhen(_, more)) => Ok(self.authority.check(who, more).await?),
            _ => Err(unlisted(interface, method)),
        }
    }
}

fn unlisted(interface: &str, method: &str) -> VgpudError {
    vgpud_model::error::Error::AccessDenied(format!(
        "{interface}.{method} is not in the bouncer's table (a bug in vgpud)"
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method in the published introspection data is in the table, and nothing else.
    #[test]
    fn the_table_covers_every_introspected_method() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dbus");
        let mut introspected = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("xml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let opts = roxmltree::ParsingOptions {
                allow_dtd: true,
                ..Default::default()
            };
            let doc = roxmltree::Document::parse_with_options(&text, opts).unwrap();
            for iface in doc.descendants().filter(|n| n.has_tag_name("interface")) {
                let iname = iface.attribute("name").unwrap();
                if !iname.starts_with("org.vgpud1.") {
                    continue;
                }
                for m in iface.children().filter(|n| n.has_tag_name("method")) {
                    introspected.push((iname.to_owned(), m.attribute("name").unwrap().to_owned()));
                }
            }
        }
        assert!(
            introspected.len() >= TABLE.len() - 1,
            "read {introspected:?}"
        );
        for (i, m) in &introspected {
            assert!(
                need(i, m).is_some(),
                "{i}.{m} is not in the bouncer's table"
            );
        }
        for (i, m, _) in TABLE {
            assert!(
                introspected.iter().any(|(a, b)| a == i && b == m),
                "{i}.{m} is in the table but not served"
            );
        }
    }

    #[test]
    fn changes_need_an_action_and_reads_need_none() {
        assert_eq!(
            need("org.vgpud1.Manager", "GetCapacity"),
            Some(Need::Nothing)
        );
        assert_eq!(
            need("org.vgpud1.Device", "Remove"),
            Some(Need::Always(Action::RemoveDevice))
        );
        assert_eq!(need("org.vgpud1.Manager", "Frobnicate"), None);
        for (i, m, n) in TABLE {
            let reads = ["GetCapacity", "GetDevice", "Plan"];
            assert_eq!(
                *n == Need::Nothing,
                reads.contains(m),
                "{i}.{m}: only reads go without an action"
            );
        }
    }
}
