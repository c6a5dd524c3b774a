//! `vgpuctl monitor`: vgpud's ObjectManager and PropertiesChanged signals, one line each (or
//! one JSON object per line), until SIGINT or SIGTERM.

use std::collections::HashMap;

use futures_util::StreamExt;
use serde_json::{json, Map, Value as Json};
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{MatchRule, Message, MessageStream};

use super::client::Client;
use super::error::{Class, CliError};
use super::output::{self, value_to_json};
use vgpud_api::names::{unescape_path_element, ROOT_PATH};

const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const OURS: &str = "org.vgpud1.";

pub async fn run(client: &Client, json: bool) -> Result<(), CliError> {
    let bus_error = |e: zbus::Error| CliError::from_zbus(e, client.bus());
    // One rule for every signal under /org/vgpud; the members are told apart below.
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .path_namespace(ROOT_PATH)
        .map_err(bus_error)?
        .build();
    let mut stream = client
        .bounded(MessageStream::for_match_rule(
            rule,
            client.connection(),
            Some(4096),
        ))
        .await?;
    // A call proves vgpud is there (and activates it); the match is already in place.
    let manager = client.manager().await?;
    client.bounded(manager.version()).await?;
    eprintln!(
        "vgpuctl: monitoring vgpud on {}; Ctrl-C stops",
        client.bus()
    );

    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return Err(CliError::other("cannot listen for SIGINT and SIGTERM")),
    };
    loop {
        let msg = tokio::select! {
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
            next = stream.next() => next,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(CliError::from_zbus(e, client.bus())),
            None => {
                return Err(CliError::new(
                    Class::Unreachable,
                    format!("lost the connection to {}", client.bus()),
                ))
            }
        };
        for event in events(&msg) {
            let text = if json {
                event.to_string()
            } else {
                human(&event)
            };
            output::line(&text)?;
        }
    }
}

/// What kind of object a path names, and its id in the user's words.
pub fn kind_and_id(path: &str) -> (&'static str, String) {
    let Some(rest) = path.strip_prefix(ROOT_PATH) else {
        return ("object", path.to_owned());
    };
    let parts: Vec<&str> = rest.split('/').skip(1).collect();
    let un = |s: &str| unescape_path_element(s).unwrap_or_else(|| s.to_owned());
    match parts.as_slice() {
        [] => ("manager", String::new()),
        ["devices", uuid] => ("device", uuid.replace('_', "-")),
        ["parents", parent] => ("parent", un(parent)),
        ["parents", parent, "types", id] => ("type", format!("{}/{}", un(parent), un(id))),
        ["guests", id] => ("guest", (*id).to_owned()),
        _ => ("object", path.to_owned()),
    }
}

fn props_json(props: &HashMap<String, OwnedValue>) -> Json {
    Json::Object(
        props
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect::<Map<_, _>>(),
    )
}

/// The documented JSON events a signal stands for (none for signals of other interfaces).
pub fn events(msg: &Message) -> Vec<Json> {
    let header = msg.header();
    let (Some(iface), Some(member), Some(path)) =
        (header.interface(), header.member(), header.path())
    else {
        return Vec::new();
    };
    let body = msg.body();
    match (iface.as_str(), member.as_str()) {
        (OBJECT_MANAGER, "InterfacesAdded") => {
            type Added = (
                OwnedObjectPath,
                HashMap<String, HashMap<String, OwnedValue>>,
            );
            let Ok((object, ifaces)) = body.deserialize::<Added>() else {
                return Vec::new();
            };
            let ifaces: Map<String, Json> = ifaces
                .iter()
                .filter(|(name, _)| name.starts_with(OURS))
                .map(|(name, props)| (name.clone(), props_json(props)))
                .collect();
            if ifaces.is_empty() {
                return Vec::new();
            }
            let (kind, id) = kind_and_id(object.as_str());
            vec![json!({"event": "added", "kind": kind, "id": id,
                        "path": object.as_str(), "interfaces": ifaces})]
        }
        (OBJECT_MANAGER, "InterfacesRemoved") => {
            let Ok((object, ifaces)) = body.deserialize::<(OwnedObjectPath, Vec<String>)>() else {
                return Vec::new();
            };
            let mut ifaces: Vec<String> =
                ifaces.into_iter().filter(|n| n.starts_with(OURS)).collect();
            if ifaces.is_empty() {
                return Vec::new();
            }
            ifaces.sort();
            let (kind, id) = kind_and_id(object.as_str());
            vec![json!({"event": "removed", "kind": kind, "id": id,
                        "path": object.as_str(), "interfaces": ifaces})]
        }
        (PROPERTIES, "PropertiesChanged") => {
            type Changed = (String, HashMap<String, OwnedValue>, Vec<String>);
            let Ok((name, changed, mut invalidated)) = body.deserialize::<Changed>() else {
                return Vec::new();
            };
            if !name.starts_with(OURS) {
                return Vec::new();
            }
            invalidated.sort();
            let (kind, id) = kind_and_id(path.as_str());
            vec![json!({"event": "changed", "kind": kind, "id": id,
                        "path": path.as_str(), "interface": name,
                        "changed": props_json(&changed), "invalidated": invalidated})]
        }
        _ => Vec::new(),
    }
}

/// One line for people: "added device <uuid>", "changed type <p>/<id> AvailableInstances=3".
pub fn human(event: &Json) -> String {
    let text = |k: &str| event[k].as_str().unwrap_or_default().to_owned();
    let mut line = format!("{} {}", text("event"), text("kind"));
    let id = text("id");
    if !id.is_empty() {
        line.push(' ');
        line.push_str(&id);
    }
    if let Some(changed) = event["changed"].as_object() {
        for (k, v) in changed {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    if let Some(invalidated) = event["invalidated"].as_array() {
        for k in invalidated.iter().filter_map(Json::as_str) {
            line.push_str(&format!(" {k}=?"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_objects() {
        assert_eq!(kind_and_id("/org/vgpud"), ("manager", String::new()));
        assert_eq!(
            kind_and_id("/org/vgpud/devices/83b8f4f2_509f_382f_3c1e_e6bfe0fa1001"),
            ("device", "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_owned())
        );
        assert_eq!(
            kind_and_id("/org/vgpud/parents/0000_3a20_3a00_2e0/types/nvidia_2d231"),
            ("type", "0000:20:00.0/nvidia-231".to_owned())
        );
        assert_eq!(
            kind_and_id("/org/vgpud/parents/0000_3a20_3a00_2e0"),
            ("parent", "0000:20:00.0".to_owned())
        );
        assert_eq!(kind_and_id("/x"), ("object", "/x".to_owned()));
    }

    #[test]
    fn human_lines_show_changed_properties() {
        let e = json!({"event": "changed", "kind": "type", "id": "p/t",
                       "changed": {"AvailableInstances": 3}, "invalidated": ["Devices"]});
        assert_eq!(human(&e), "changed type p/t AvailableInstances=3 Devices=?");
        let e = json!({"event": "added", "kind": "manager", "id": ""});
        assert_eq!(human(&e), "added manager");
    }

    #[test]
    fn signals_become_events() {
        let msg = Message::signal(
            "/org/vgpud/devices/83b8f4f2_509f_382f_3c1e_e6bfe0fa1001",
            PROPERTIES,
            "PropertiesChanged",
        )
        .unwrap()
        .build(&(
            "org.vgpud1.Device",
            HashMap::from([("Active".to_owned(), zbus::zvariant::Value::from(false))]),
            Vec::<String>::new(),
        ))
        .unwrap();
        let events = events(&msg);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["changed"]["Active"], json!(false));
        assert_eq!(events[0]["kind"], json!("device"));
    }
}
