//! The D-Bus argument fuzzer: every method of every vgpud interface called with random and
//! hostile values (`../` and absolute paths aimed at a canary, NUL and control characters,
//! 1 MiB strings, huge arrays, deep variants, unknown options, numbers at their limits) and
//! with wrong signatures. Afterwards the daemon must be alive and answering, must not have
//! panicked, must not have written outside its roots (the canary paths do not exist), its
//! definitions must all parse, and its D-Bus picture must match sysfs.

use std::time::{Duration, Instant};

use zbus::zvariant::{Array, Dict, ObjectPath, Signature, Structure, StructureBuilder, Value};

use crate::prove::rig::Rig;
use crate::prove::{check, Rng};
use vgpud_api::names::{BUS_NAME, ROOT_PATH};
use vgpud_daemon::store::Store;

/// One method to fuzz: where it lives and its input signature.
#[derive(Debug, Clone)]
pub struct Method {
    pub path: String,
    pub interface: String,
    pub name: String,
    pub signature: String,
}

#[derive(Debug, Default)]
pub struct FuzzReport {
    pub methods: usize,
    pub calls: usize,
    /// Calls answered with an error (the expected outcome of most hostile calls).
    pub errors: usize,
    /// Calls the bus refused to carry (invalid strings); the daemon never saw them.
    pub refused_by_bus: usize,
    /// Calls with no answer within the bound.
    pub timeouts: usize,
    pub findings: Vec<String>,
}

/// The input signature of each method, parsed from the service's introspection.
pub fn methods_of(path: &str, xml: &str) -> Result<Vec<Method>, String> {
    // Introspection data starts with a DOCTYPE.
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, opts)
        .map_err(|e| format!("introspection XML: {e}"))?;
    let mut out = Vec::new();
    // Only the object's own interfaces: zbus also describes child nodes inline.
    for iface in doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("interface"))
    {
        let iname = iface.attribute("name").unwrap_or_default();
        if !iname.starts_with("org.vgpud1.") {
            continue;
        }
        for m in iface.children().filter(|n| n.has_tag_name("method")) {
            let signature: String = m
                .children()
                .filter(|a| {
                    a.has_tag_name("arg") && a.attribute("direction").unwrap_or("in") == "in"
                })
                .filter_map(|a| a.attribute("type"))
                .collect();
            out.push(Method {
                path: path.to_owned(),
                interface: iname.to_owned(),
                name: m.attribute("name").unwrap_or_default().to_owned(),
                signature,
            });
        }
    }
    Ok(out)
}

/// Values that have broken services before.
struct Hostile {
    canary: String,
}

impl Hostile {
    fn string(&self, rng: &mut Rng) -> String {
        let c = &self.canary;
        match rng.below(22) {
            0 => String::new(),
            1 => "../".into(),
            2 => format!("../../../../../../../..{c}"),
            3 => c.clone(),
            4 => format!("mtty/../../../..{c}"),
            5 => "a\0b".into(),
            6 => "x".repeat(1 << 20),
            7 => "\n\t\u{1b}[31m\r".into(),
            8 => "mtty-1".into(),
            9 => "GRID T4-2Q".into(),
            10 => vgpud_model::MdevUuid::new_v4().to_string(),
            11 => vgpud_model::MdevUuid::new_v4().to_string().to_uppercase() + "\n",
            12 => "ｍｔｔｙ-１".into(),
            13 => "*".into(),
            14 => "mtty".into(),
            15 => "/org/vgpud".into(),
            16 => "y".repeat(300),
            17 => "nvidia-231".into(),
            18 => format!("{c}/../../etc/passwd"),
            19 => "%s%n%x".into(),
            20 => "0000:20:00.0".into(),
            _ => format!("{:x}", rng.next_u64()),
        }
    }

    fn path(&self, rng: &mut Rng) -> ObjectPath<'static> {
        let text = match rng.below(6) {
            0 => "/".to_owned(),
            1 => format!(
                "/org/vgpud/devices/{}",
                vgpud_api::names::escape_path_element(&vgpud_model::MdevUuid::new_v4().to_string())
            ),
            2 => format!(
                "/org/vgpud/devices/{}",
                vgpud_api::names::escape_path_element(&self.string(rng))
            ),
            3 => "/org/vgpud/parents/_2e_2e/types/_2e_2e".to_owned(),
            4 => format!("/org/vgpud/{}", "a/".repeat(200) + "b"),
            _ => "/org/vgpud".to_owned(),
        };
        ObjectPath::try_from(text).unwrap_or_else(|_| ObjectPath::from_static_str_unchecked("/"))
    }

    /// A value of signature `sig` (one complete type), hostile where it can be.
    fn value(&self, rng: &mut Rng, sig: &Signature, depth: u32) -> Value<'static> {
        match sig {
            Signature::U8 => Value::U8(rng.next_u64() as u8),
            Signature::Bool => Value::Bool(rng.chance(2)),
            Signature::I16 => Value::I16(*rng.pick(&[i16::MIN, -1, 0, i16::MAX])),
            Signature::U16 => Value::U16(*rng.pick(&[0, 1, u16::MAX])),
            Signature::I32 => Value::I32(*rng.pick(&[i32::MIN, -1, 0, 1, 4096, i32::MAX])),
            Signature::U32 => Value::U32(*rng.pick(&[0, 1, 64, 4096, u32::MAX])),
            Signature::I64 => Value::I64(*rng.pick(&[i64::MIN, -1, 0, i64::MAX])),
            Signature::U64 => Value::U64(*rng.pick(&[0, 1, u64::MAX])),
            Signature::F64 => Value::F64(*rng.pick(&[0.0, -1.0, f64::MAX, f64::NAN])),
            Signature::Str => Value::from(self.string(rng)),
            Signature::ObjectPath => Value::ObjectPath(self.path(rng)),
            Signature::Signature => Value::from(Signature::Str),
            Signature::Variant => {
                if depth > 40 || rng.chance(3) {
                    Value::new(self.string(rng))
                } else {
                    let inner = self.any_signature(rng, depth + 1);
                    Value::new(self.value(rng, &inner, depth + 1))
                }
            }
            Signature::Array(child) => {
                let child = child.signature();
                let mut a = Array::new(child);
                let n = match rng.below(10) {
                    0 => 10_000,
                    1..=3 => 0,
                    _ => rng.below(5),
                };
                for _ in 0..n {
                    if a.append(self.value(rng, child, depth + 1)).is_err() {
                        break;
                    }
                }
                Value::Array(a)
            }
            Signature::Dict { key, value } => {
                let (k, v) = (key.signature(), value.signature());
                let mut d = Dict::new(k, v);
                let keys = [
                    "parent",
                    "uuid",
                    "attrs",
                    "persistent",
                    "autostart",
                    "numa_node",
                    "force",
                    "kernel",
                    "initrd",
                    "cmdline",
                    "payload",
                    "memory_mib",
                    "vcpus",
                    "evil",
                    "",
                ];
                for _ in 0..rng.below(6) {
                    let key = if *k == Signature::Str {
                        Value::from(rng.pick(&keys).to_string())
                    } else {
                        self.value(rng, k, depth + 1)
                    };
                    let val = self.value(rng, v, depth + 1);
                    let _ = d.append(key, val);
                }
                Value::Dict(d)
            }
            Signature::Structure(fields) => {
                let mut b = StructureBuilder::new();
                for f in fields.iter() {
                    b = b.append_field(self.value(rng, f, depth + 1));
                }
                b.build()
                    .map(Value::Structure)
                    .unwrap_or_else(|_| Value::from(0u32))
            }
            _ => Value::from(self.string(rng)),
        }
    }

    fn any_signature(&self, rng: &mut Rng, depth: u32) -> Signature {
        let simple = [
            "s", "o", "b", "i", "u", "x", "t", "y", "d", "v", "as", "ao", "a{sv}", "a(ss)",
            "a{ss}", "(su)", "aay",
        ];
        let text = if depth > 3 { "s" } else { rng.pick(&simple) };
        text.parse().expect("a valid signature")
    }

    /// A whole argument list: the method's own signature or a random wrong one.
    fn body(&self, rng: &mut Rng, signature: &str) -> Structure<'static> {
        let parsed: Signature = if rng.chance(4) {
            let n = rng.below(4);
            let parts: Vec<String> = (0..n)
                .map(|_| self.any_signature(rng, 0).to_string())
                .collect();
            format!("({})", parts.concat())
                .parse()
                .unwrap_or(Signature::Unit)
        } else {
            format!("({signature})").parse().unwrap_or(Signature::Unit)
        };
        let mut b = StructureBuilder::new();
        if let Signature::Structure(fields) = &parsed {
            for f in fields.iter() {
                b = b.append_field(self.value(rng, f, 0));
            }
        }
        b.build().unwrap_or_else(|_| {
            StructureBuilder::new()
                .add_field(0u32)
                .build()
                .expect("one field")
        })
    }
}

/// Introspects the objects worth fuzzing: the manager and one of each other kind.
async fn discover(conn: &zbus::Connection) -> Result<Vec<Method>, String> {
    let pic = check::dbus_picture(conn).await?;
    let mut paths = vec![ROOT_PATH.to_owned()];
    if let Some((parent, types)) = pic.parents.iter().next() {
        let p = vgpud_model::ParentName::new(parent).map_err(|e| e.to_string())?;
        paths.push(vgpud_api::names::parent_path(&p).to_string());
        if let Some(t) = types.keys().next() {
            let t = vgpud_model::TypeId::new(t).map_err(|e| e.to_string())?;
            paths.push(vgpud_api::names::type_path(&p, &t).to_string());
        }
    }
    if let Some(uuid) = pic.devices.keys().next() {
        let u = vgpud_model::MdevUuid::parse(uuid).map_err(|e| e.to_string())?;
        paths.push(vgpud_api::names::device_path(&u).to_string());
    }
    let mut methods = Vec::new();
    for path in paths {
        let proxy = zbus::fdo::IntrospectableProxy::builder(conn)
            .destination(BUS_NAME)
            .and_then(|b| b.path(path.clone()))
            .map_err(|e| e.to_string())?
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let xml = proxy
            .introspect()
            .await
            .map_err(|e| format!("introspect {path}: {e}"))?;
        methods.extend(methods_of(&path, &xml)?);
    }
    methods.sort_by(|a, b| (&a.path, &a.interface, &a.name).cmp(&(&b.path, &b.interface, &b.name)));
    methods.dedup_by(|a, b| (&a.path, &a.interface, &a.name) == (&b.path, &b.interface, &b.name));
    for m in &methods {
        tracing::debug!(path = %m.path, interface = %m.interface, method = %m.name, signature = %m.signature, "fuzzing");
    }
    Ok(methods)
}

/// Fuzzes for `budget` (at least `min_calls` calls), then checks the daemon.
pub async fn run(rig: &mut Rig, budget: Duration, min_calls: usize, seed: u64) -> FuzzReport {
    let mut report = FuzzReport::default();
    let canary = format!("/tmp/vgpud-prove-canary-{}-{seed:x}", std::process::id());
    let hostile = Hostile {
        canary: canary.clone(),
    };
    let mut rng = Rng::new(seed);
    // A live device, so the Device interface is fuzzed too.
    let m = vgpud_api::proxies::ManagerProxy::new(rig.conn()).await;
    if let Ok(m) = &m {
        let _ = m.create_device("mtty-1", Default::default()).await;
    }
    let methods = match discover(rig.conn()).await {
        Ok(m) if !m.is_empty() => m,
        Ok(_) => {
            report.findings.push("no methods found to fuzz".into());
            return report;
        }
        Err(e) => {
            report.findings.push(e);
            return report;
        }
    };
    report.methods = methods.len();
    let mut conn = match rig.connect().await {
        Ok(c) => c,
        Err(e) => {
            report.findings.push(e);
            return report;
        }
    };
    let started = Instant::now();
    while started.elapsed() < budget || report.calls < min_calls {
        let method = rng.pick(&methods).clone();
        let body = hostile.body(&mut rng, &method.signature);
        let call = conn.call_method(
            Some(BUS_NAME),
            method.path.as_str(),
            Some(method.interface.as_str()),
            method.name.as_str(),
            &body,
        );
        report.calls += 1;
        match tokio::time::timeout(Duration::from_secs(15), call).await {
            Ok(Ok(_)) => {}
            Ok(Err(zbus::Error::MethodError(..))) => report.errors += 1,
            Ok(Err(_)) => {
                // The bus dropped the connection (it refuses invalid strings) or the message
                // could not be encoded: the daemon never saw it. Start a new connection.
                report.refused_by_bus += 1;
                match rig.connect().await {
                    Ok(c) => conn = c,
                    Err(e) => {
                        report.findings.push(format!("cannot reconnect: {e}"));
                        break;
                    }
                }
            }
            Err(_) => {
                report.timeouts += 1;
                report.findings.push(format!(
                    "{}.{} on {} got no answer within 15 s (arguments {:?}; the daemon's log ends: {})",
                    method.interface,
                    method.name,
                    method.path,
                    body,
                    rig.log_tail(8)
                ));
            }
        }
        if report.calls % 200 == 0 && !rig.daemon_alive() {
            report.findings.push(format!(
                "the daemon died after {} calls: {}",
                report.calls,
                rig.log_tail(5)
            ));
            return report;
        }
    }
    report.findings.extend(after_checks(rig, &canary).await);
    report
}

/// Alive, answering, no panic, nothing written outside the roots, definitions parse, and the
/// picture matches sysfs.
async fn after_checks(rig: &mut Rig, canary: &str) -> Vec<String> {
    let mut findings = Vec::new();
    if !rig.daemon_alive() {
        findings.push(format!("the daemon is dead: {}", rig.log_tail(5)));
        return findings;
    }
    match vgpud_api::proxies::ManagerProxy::builder(rig.conn())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
    {
        Ok(m) => {
            if let Err(e) = m.version().await {
                findings.push(format!("the daemon does not answer Version: {e}"));
            }
        }
        Err(e) => findings.push(format!("no Manager proxy: {e}")),
    }
    findings.extend(
        rig.panics_in_log()
            .into_iter()
            .map(|l| format!("panic: {l}")),
    );
    let canary_path = std::path::Path::new(canary);
    let dir = canary_path.parent().unwrap_or(std::path::Path::new("/tmp"));
    let stem = canary_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stem) {
                findings.push(format!("written outside the roots: {}", e.path().display()));
            }
        }
    }
    match Store::open(&rig.definitions, &rig.state) {
        Ok(s) => {
            if let Err(e) = s.list() {
                findings.push(format!("definitions cannot be listed: {e}"));
            }
            findings.extend(
                s.problems()
                    .into_iter()
                    .map(|p| format!("definition store: {p:?}")),
            );
        }
        Err(e) => findings.push(format!("definition store: {e}")),
    }
    if let Err(diff) = check::settled(rig.conn(), &rig.sim.mount, Duration::from_secs(15)).await {
        findings.extend(diff.into_iter().map(|d| format!("after fuzzing: {d}")));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_come_from_introspection() {
        let xml = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
            "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
            <node><interface name="org.vgpud1.Manager">
            <method name="CreateDevice"><arg name="t" type="s" direction="in"/>
              <arg name="o" type="a{sv}" direction="in"/><arg type="o" direction="out"/></method>
            <method name="ReloadPolicy"><arg type="s" direction="out"/></method></interface>
            <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>
            <node name="devices"><interface name="org.vgpud1.Device"><method name="Start"/></interface></node>
            </node>"#;
        let m = methods_of("/org/vgpud", xml).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].name.as_str(), m[0].signature.as_str()),
            ("CreateDevice", "sa{sv}")
        );
        assert_eq!(
            (m[1].name.as_str(), m[1].signature.as_str()),
            ("ReloadPolicy", "")
        );
    }

    #[test]
    fn bodies_follow_the_signature_or_break_it() {
        let h = Hostile {
            canary: "/tmp/c".into(),
        };
        let mut rng = Rng::new(3);
        let (mut right, mut wrong) = (0, 0);
        for _ in 0..200 {
            let body = h.body(&mut rng, "sa{sv}");
            if body.signature().to_string() == "(sa{sv})" {
                right += 1;
            } else {
                wrong += 1;
            }
        }
        assert!(right > 100 && wrong > 10, "{right} right, {wrong} wrong");
    }
}
