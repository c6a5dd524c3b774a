//! Fault injection through the simulator's control channel: the kernel failing creates,
//! removes and attribute writes with an errno, a GPU unplugged in the middle of a create, a
//! driver unbound, a write that hangs, a device held open. Each case checks the error class the
//! caller gets, and that the D-Bus picture matches the sysfs tree afterwards.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, Value};

use crate::prove::rig::Rig;
use crate::prove::{check, Row};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};
use vgpud_sim::control::Request;

const SECTION: &str = "faults";
/// How long the picture may take to settle after a fault.
const SETTLE: Duration = Duration::from_secs(10);

/// The profiles the fault cases expect: the mtty sample driver and NVIDIA T4s (a vendor
/// attribute, one type per GPU).
pub fn profiles() -> Vec<String> {
    vec!["mtty".into(), "nvidia-t4:4".into()]
}

/// The mtty type's create file, relative to the simulator's mount.
const MTTY_CREATE: &str = "class/mdev_bus/mtty/mdev_supported_types/mtty-1/create";

fn inject(path: &str, errno: Option<&str>, delay_ms: Option<u64>) -> Request {
    Request::Inject {
        path: path.to_owned(),
        errno: errno.map(str::to_owned),
        delay_ms,
        count: Some(1),
    }
}

/// The D-Bus error name of a failed call ("" for success or a non-method error).
fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("(not a method error: {other})"),
    }
}

fn error_text(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            format!("{name}: {}", msg.as_deref().unwrap_or(""))
        }
        other => other.to_string(),
    }
}

/// Checks that `r` failed with `org.vgpud1.Error.<class>`.
fn expect_class<T>(r: Result<T, zbus::Error>, class: &str) -> Result<String, String> {
    let want = format!("org.vgpud1.Error.{class}");
    match r {
        Ok(_) => Err(format!("succeeded; {want} expected")),
        Err(e) if error_name(&e) == want => Ok(error_text(&e)),
        Err(e) => Err(format!("{}; {want} expected", error_text(&e))),
    }
}

struct Ctx<'a> {
    rig: &'a Rig,
    m: ManagerProxy<'a>,
    t4: String,
    t4_type: String,
    spare_t4: String,
}

impl Ctx<'_> {
    async fn device(&self, path: OwnedObjectPath) -> Result<DeviceProxy<'_>, String> {
        DeviceProxy::builder(self.rig.conn())
            .path(path)
            .map_err(|e| e.to_string())?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())
    }

    /// Creates an mtty device; its proxy and UUID.
    async fn create_mtty(&self) -> Result<(DeviceProxy<'_>, String), String> {
        let path = self
            .create_on("mtty", "mtty-1", &[])
            .await
            .map_err(|e| error_text(&e))?;
        let dev = self.device(path).await?;
        let uuid = dev.uuid().await.map_err(|e| e.to_string())?;
        Ok((dev, uuid))
    }

    async fn remove(&self, path: OwnedObjectPath) -> Result<(), String> {
        self.device(path)
            .await?
            .remove(HashMap::new())
            .await
            .map_err(|e| error_text(&e))
    }

    /// The picture once it has settled; `when` names the moment in the error.
    async fn settled(&self, when: &str) -> Result<check::Picture, String> {
        check::settled(self.rig.conn(), &self.rig.sim.mount, SETTLE)
            .await
            .map_err(|d| format!("{when}: {}", d.join("; ")))
    }

    fn ctl(&self, req: Request) -> Result<serde_json::Value, String> {
        self.rig.sim.ctl(&req)
    }

    async fn create_on(
        &self,
        parent: &str,
        type_id: &str,
        extra: &[(&str, Value<'_>)],
    ) -> Result<OwnedObjectPath, zbus::Error> {
        let mut opts: HashMap<&str, Value<'_>> = HashMap::from([("parent", Value::from(parent))]);
        for (k, v) in extra {
            opts.insert(k, v.try_clone().expect("plain value"));
        }
        self.m.create_device(type_id, opts).await
    }

    /// The picture settles to agreement; the devices in sysfs.
    async fn consistent(&self) -> Result<usize, String> {
        let picture = self.settled("D-Bus and sysfs disagree").await?;
        Ok(picture.devices.len())
    }
}

/// Runs every case on a rig started with [`profiles`]; one row per case.
pub async fn run(rig: &Rig) -> Vec<Row> {
    let setup = async {
        let pic = check::sysfs_picture(&rig.sim.mount).map_err(|e| e.to_string())?;
        let mut t4s: Vec<(&String, &std::collections::BTreeMap<String, u32>)> = pic
            .parents
            .iter()
            .filter(|(_, types)| types.keys().any(|t| t.starts_with("nvidia-")))
            .collect();
        t4s.sort();
        if t4s.len() < 2 {
            return Err("the fault host needs at least two NVIDIA parents".to_owned());
        }
        let t4_type = t4s[0]
            .1
            .keys()
            .next()
            .cloned()
            .ok_or("a T4 without types")?;
        let m = ManagerProxy::builder(rig.conn())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(Ctx {
            rig,
            m,
            t4: t4s[0].0.clone(),
            t4_type,
            spare_t4: t4s[1].0.clone(),
        })
    };
    let ctx = match setup.await {
        Ok(c) => c,
        Err(e) => return vec![Row::new(SECTION, "set-up", false, e)],
    };
    let mut rows = Vec::new();
    let cases: [(&str, CaseFn); 10] = [
        ("create: driver says EIO", create_eio),
        ("create: driver says ENOSPC", create_enospc),
        ("create: UUID exists (EEXIST)", create_eexist),
        ("remove: driver says EIO", remove_eio),
        ("attribute write: EIO rolls back", attr_eio),
        ("GPU unplugged during a create", unplug_mid_create),
        ("driver unbound and rebound", unbind_rebind),
        ("slow write: others answered", slow_write),
        ("held device: remove refused", held_device),
        ("after all cases", final_check),
    ];
    for (name, case) in cases {
        let _ = ctx.rig.sim.ctl(&Request::ClearInjections);
        let r = case(&ctx).await;
        rows.push(match r {
            Ok(what) => Row::new(SECTION, name, true, what),
            Err(why) => Row::new(SECTION, name, false, why),
        });
    }
    rows
}

type CaseFn = for<'a> fn(
    &'a Ctx<'a>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<String, String>> + 'a>,
>;

macro_rules! case {
    ($name:ident, |$ctx:ident| $body:block) => {
        fn $name<'a>(
            $ctx: &'a Ctx<'a>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + 'a>> {
            Box::pin(async move { $body })
        }
    };
}

case!(create_eio, |ctx| {
    let before = ctx.consistent().await?;
    ctx.ctl(inject(MTTY_CREATE, Some("EIO"), None))?;
    let text = expect_class(ctx.create_on("mtty", "mtty-1", &[]).await, "Failed")?;
    let after = ctx.consistent().await?;
    if after != before {
        return Err(format!(
            "{} devices before, {after} after a failed create",
            before
        ));
    }
    Ok(format!("Failed, consistent ({text})"))
});

case!(create_enospc, |ctx| {
    ctx.ctl(inject(MTTY_CREATE, Some("ENOSPC"), None))?;
    let text = expect_class(ctx.create_on("mtty", "mtty-1", &[]).await, "NoCapacity")?;
    ctx.consistent().await?;
    Ok(format!("NoCapacity, consistent ({text})"))
});

case!(create_eexist, |ctx| {
    let uuid = vgpud_model::MdevUuid::new_v4().to_string();
    ctx.ctl(inject(MTTY_CREATE, Some("EEXIST"), None))?;
    let r = ctx
        .create_on("mtty", "mtty-1", &[("uuid", Value::from(uuid.as_str()))])
        .await;
    let text = expect_class(r, "AlreadyExists")?;
    ctx.consistent().await?;
    Ok(format!("AlreadyExists, consistent ({text})"))
});

case!(remove_eio, |ctx| {
    let (dev, uuid) = ctx.create_mtty().await?;
    ctx.ctl(inject(
        &format!("bus/mdev/devices/{uuid}/remove"),
        Some("EIO"),
        None,
    ))?;
    let text = expect_class(dev.remove(HashMap::new()).await, "Failed")?;
    ctx.consistent().await?;
    if !dev.active().await.map_err(|e| e.to_string())? {
        return Err("the device is not active after its remove failed".into());
    }
    dev.remove(HashMap::new())
        .await
        .map_err(|e| format!("second remove: {}", error_text(&e)))?;
    ctx.consistent().await?;
    Ok(format!(
        "Failed, device kept and consistent; removed on retry ({text})"
    ))
});

case!(attr_eio, |ctx| {
    let before = ctx.consistent().await?;
    ctx.ctl(inject("*/nvidia/vgpu_params", Some("EIO"), None))?;
    let attrs = vec![(
        "nvidia/vgpu_params".to_owned(),
        "frame_rate_limiter=0".to_owned(),
    )];
    let r = ctx
        .create_on(&ctx.t4, &ctx.t4_type, &[("attrs", Value::from(attrs))])
        .await;
    let text = expect_class(r, "Failed")?;
    if !text.contains("removed again") {
        return Err(format!(
            "the error does not say the device was removed: {text}"
        ));
    }
    let after = ctx.consistent().await?;
    if after != before {
        return Err(format!(
            "{before} devices before, {after} after the rolled-back create"
        ));
    }
    Ok(format!("Failed, device removed again, consistent ({text})"))
});

case!(unplug_mid_create, |ctx| {
    let parent = ctx.spare_t4.clone();
    let pic = check::sysfs_picture(&ctx.rig.sim.mount).map_err(|e| e.to_string())?;
    let type_id = pic
        .parents
        .get(&parent)
        .and_then(|t| t.keys().next().cloned())
        .ok_or("no type")?;
    ctx.ctl(inject(
        &format!("class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"),
        None,
        Some(600),
    ))?;
    let create = ctx.create_on(&parent, &type_id, &[]);
    let unplug = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        ctx.ctl(Request::Unplug {
            parent: parent.clone(),
        })
    };
    let (created, unplugged) = tokio::join!(create, unplug);
    unplugged?;
    let outcome = match &created {
        Ok(_) => "the create won the race".to_owned(),
        Err(e) => error_text(e),
    };
    let pic = ctx
        .consistent()
        .await
        .map_err(|e| format!("after the unplug: {e}"))?;
    ctx.ctl(Request::Plug {
        profile: None,
        parent: Some(parent.clone()),
    })?;
    ctx.consistent()
        .await
        .map_err(|e| format!("after the re-plug: {e}"))?;
    Ok(format!(
        "{outcome}; consistent after unplug ({pic} devices) and re-plug"
    ))
});

case!(unbind_rebind, |ctx| {
    let parent = ctx.spare_t4.clone();
    ctx.ctl(Request::Unbind {
        parent: parent.clone(),
    })?;
    let gone = ctx.settled("after unbind").await?;
    if gone.parents.contains_key(&parent) {
        return Err(format!(
            "{parent} is still an mdev parent after its driver was unbound"
        ));
    }
    ctx.ctl(Request::Bind {
        parent: parent.clone(),
    })?;
    let back = ctx.settled("after bind").await?;
    if !back.parents.contains_key(&parent) {
        return Err(format!("{parent} did not come back after bind"));
    }
    Ok("parent left D-Bus on unbind and came back on bind".into())
});

case!(slow_write, |ctx| {
    ctx.ctl(inject(MTTY_CREATE, None, Some(3000)))?;
    let t0 = Instant::now();
    let slow = ctx.create_on("mtty", "mtty-1", &[]);
    let others = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t1 = Instant::now();
        check::dbus_picture(ctx.rig.conn()).await?;
        let listed = t1.elapsed();
        let t2 = Instant::now();
        let path = ctx
            .create_on(&ctx.t4, &ctx.t4_type, &[])
            .await
            .map_err(|e| error_text(&e))?;
        ctx.remove(path).await?;
        Ok::<_, String>((listed, t2.elapsed(), t0.elapsed()))
    };
    let (slow, others) = tokio::join!(slow, others);
    let slow_took = t0.elapsed();
    let (listed, round_trip, others_done) = others?;
    let path = slow.map_err(|e| format!("the slow create failed: {}", error_text(&e)))?;
    ctx.remove(path).await?;
    if others_done >= slow_took {
        return Err("other callers were answered only after the slow write finished".into());
    }
    ctx.consistent().await?;
    Ok(format!(
        "while a create hung {:.1} s: GetManagedObjects {:.1} ms, create+remove elsewhere {:.1} ms",
        slow_took.as_secs_f64(),
        listed.as_secs_f64() * 1e3,
        round_trip.as_secs_f64() * 1e3
    ))
});

case!(held_device, |ctx| {
    let (dev, uuid) = ctx.create_mtty().await?;
    ctx.ctl(Request::Hold {
        device: uuid.clone(),
    })?;
    let text = expect_class(dev.remove(HashMap::new()).await, "Busy")?;
    if !text.contains("pid") {
        return Err(format!("Busy does not name the holder: {text}"));
    }
    ctx.ctl(Request::Release { device: uuid })?;
    dev.remove(HashMap::new())
        .await
        .map_err(|e| format!("remove after release: {}", error_text(&e)))?;
    ctx.consistent().await?;
    Ok(format!(
        "Busy naming the holder, removed after release ({text})"
    ))
});

case!(final_check, |ctx| {
    let n = ctx.consistent().await?;
    let panics = ctx.rig.panics_in_log();
    if !panics.is_empty() {
        return Err(format!("the daemon panicked: {}", panics.join(" | ")));
    }
    Ok(format!("consistent ({n} devices), no panic in the log"))
});
