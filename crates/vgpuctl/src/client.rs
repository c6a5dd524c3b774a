//! The connection to vgpud: every call is bounded by one deadline, and every failure becomes a
//! `CliError` that says which bus was asked. Reads take one GetManagedObjects round trip.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{names::InterfaceName, Connection};

use super::args::describe;
use super::error::{Class, CliError};
use super::model::{DeviceInfo, Snapshot};
use vgpud_api::names::{BUS_NAME, DEVICE_IFACE, ROOT_PATH};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};
use vgpud_api::BusChoice;

pub type Options<'a> = HashMap<&'static str, Value<'a>>;

pub struct Client {
    conn: Connection,
    /// The bus in words ("the system bus"), for messages.
    bus: String,
    deadline: Instant,
    limit: Duration,
}

impl Client {
    /// Connects within `limit`; the same limit then bounds all calls together.
    pub async fn connect(bus: &BusChoice, limit: Duration) -> Result<Self, CliError> {
        let words = describe(bus);
        let deadline = Instant::now() + limit;
        let builder = match bus {
            BusChoice::System => zbus::connection::Builder::system(),
            BusChoice::Session => zbus::connection::Builder::session(),
            BusChoice::Address(a) => zbus::connection::Builder::address(a.as_str()),
        }
        .map_err(|e| CliError::from_zbus(e, &words))?;
        let conn =
            match tokio::time::timeout_at(deadline, builder.method_timeout(limit).build()).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(CliError::from_zbus(e, &words)),
                Err(_) => return Err(timed_out(&words, limit)),
            };
        Ok(Client {
            conn,
            bus: words,
            deadline,
            limit,
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }

    /// How long the calls of this command may take together.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Gives the calls that follow a fresh `limit` (a rollback after a timed-out call).
    pub fn renew(&mut self, limit: Duration) {
        self.deadline = Instant::now() + limit;
        self.limit = limit;
    }

    /// Runs one call under the deadline.
    pub async fn bounded<T>(
        &self,
        call: impl Future<Output = zbus::Result<T>>,
    ) -> Result<T, CliError> {
        match tokio::time::timeout_at(self.deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CliError::from_zbus(e, &self.bus)),
            Err(_) => Err(timed_out(&self.bus, self.limit)),
        }
    }

    pub async fn manager(&self) -> Result<ManagerProxy<'static>, CliError> {
        self.bounded(
            ManagerProxy::builder(&self.conn)
                .cache_properties(CacheProperties::No)
                .build(),
        )
        .await
    }

    pub async fn device_proxy(
        &self,
        path: &OwnedObjectPath,
    ) -> Result<DeviceProxy<'static>, CliError> {
        let builder = DeviceProxy::builder(&self.conn)
            .path(path.clone())
            .map_err(|e| CliError::from_zbus(e, &self.bus))?;
        self.bounded(builder.cache_properties(CacheProperties::No).build())
            .await
    }

    /// Everything vgpud publishes, in one round trip.
    pub async fn snapshot(&self) -> Result<Snapshot, CliError> {
        let proxy = zbus::fdo::ObjectManagerProxy::builder(&self.conn)
            .destination(BUS_NAME)
            .and_then(|b| b.path(ROOT_PATH))
            .map_err(|e| CliError::from_zbus(e, &self.bus))?
            .cache_properties(CacheProperties::No);
        let proxy = self.bounded(proxy.build()).await?;
        let objects = self
            .bounded(async { proxy.get_managed_objects().await.map_err(zbus::Error::from) })
            .await?;
        let objects = objects
            .into_iter()
            .map(|(path, ifaces)| {
                let ifaces = ifaces
                    .into_iter()
                    .map(|(name, props)| (name.to_string(), props))
                    .collect();
                (path.to_string(), ifaces)
            })
            .collect();
        Ok(Snapshot::from_objects(&objects))
    }

    /// The object path of the device with this UUID (Manager.GetDevice).
    pub async fn device_path(&self, uuid: &str) -> Result<OwnedObjectPath, CliError> {
        let manager = self.manager().await?;
        self.bounded(manager.get_device(uuid)).await
    }

    /// The device at `path` now; `None` when the object is gone.
    pub async fn device(&self, path: &OwnedObjectPath) -> Result<Option<DeviceInfo>, CliError> {
        let proxy = zbus::fdo::PropertiesProxy::builder(&self.conn)
            .destination(BUS_NAME)
            .and_then(|b| b.path(path.clone()))
            .map_err(|e| CliError::from_zbus(e, &self.bus))?
            .cache_properties(CacheProperties::No);
        let proxy = self.bounded(proxy.build()).await?;
        let iface = InterfaceName::from_static_str_unchecked(DEVICE_IFACE);
        match self
            .bounded(async { proxy.get_all(iface).await.map_err(zbus::Error::from) })
            .await
        {
            Ok(props) if props.is_empty() => Ok(None),
            Ok(props) => Ok(Some(DeviceInfo::from_props(path.as_str(), &props))),
            Err(e) if e.class == Class::NotFound => Ok(None),
            // zbus answers GetAll on a path with no such interface as UnknownInterface.
            Err(e)
                if e.dbus_name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("UnknownInterface")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The device with this UUID, `None` if vgpud does not know it.
    pub async fn find_device(&self, uuid: &str) -> Result<Option<DeviceInfo>, CliError> {
        match self.device_path(uuid).await {
            Ok(path) => self.device(&path).await,
            Err(e) if e.class == Class::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn timed_out(bus: &str, limit: Duration) -> CliError {
    CliError::new(
        Class::Unreachable,
        format!("vgpud did not answer on {bus} within {} s", limit.as_secs()),
    )
}

/// Manager.CreateDevice / DefineDevice options from the command line's words.
pub fn device_options<'a>(
    parent: Option<&'a str>,
    uuid: Option<&'a str>,
    attrs: &[(String, String)],
) -> Options<'a> {
    let mut options = Options::new();
    if let Some(p) = parent {
        options.insert("parent", Value::from(p));
    }
    if let Some(u) = uuid {
        options.insert("uuid", Value::from(u));
    }
    if !attrs.is_empty() {
        options.insert("attrs", Value::from(attrs.to_vec()));
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_carry_attrs_as_an_ordered_list_of_pairs() {
        let attrs = vec![
            ("b".to_owned(), "1".to_owned()),
            ("a".to_owned(), "2".to_owned()),
        ];
        let o = device_options(Some("0000:20:00.0"), None, &attrs);
        assert_eq!(o.len(), 2);
        assert_eq!(o["attrs"].value_signature().to_string(), "a(ss)");
        let o = device_options(None, None, &[]);
        assert!(o.is_empty());
    }

    #[tokio::test]
    async fn a_bus_that_is_not_there_is_unreachable() {
        let bus = BusChoice::Address("unix:path=/nonexistent/vgpud-test-bus".into());
        let e = Client::connect(&bus, Duration::from_secs(5))
            .await
            .err()
            .expect("no bus there");
        assert_eq!(e.class, Class::Unreachable, "{e}");
        assert!(e.message.contains("/nonexistent/vgpud-test-bus"), "{e}");
    }
}
