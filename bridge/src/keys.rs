//! The Zenoh key space of hybus bridges.
//!
//! * `hybus/svc/<name>/<bridge>/<instance>` — one exported service
//!   instance: its liveliness token, its queryable (requests) and its
//!   subscriber (fires). `<name>` is the dotted hybus name (dots are
//!   ordinary characters in a key chunk), `<bridge>` the exporting
//!   bridge's name, `<instance>` the instance id on its host.
//! * `hybus/svc/<name>/<bridge>/<instance>/cancel` — cancels of queries
//!   to that instance (a put of the query's cancel tag, see [`crate::wire`]).
//! * `hybus/topic/<name>/<bridge>` — publications of an exported topic,
//!   put by the bridge of the host they were published on.
//!
//! Everything a bridge puts on the wire is under `hybus/`; nothing else is ours.

/// Every exported service instance (liveliness subscriptions).
pub const ALL_SERVICES: &str = "hybus/svc/**";

/// Every exported topic's publications.
pub const ALL_TOPICS: &str = "hybus/topic/**";

/// One exported service instance, as its key names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// The dotted service name.
    pub name: String,
    /// The exporting bridge.
    pub bridge: String,
    /// The instance id on the exporting host.
    pub instance: u32,
}

impl InstanceKey {
    /// The key of this instance.
    pub fn key(&self) -> String {
        format!("hybus/svc/{}/{}/{}", self.name, self.bridge, self.instance)
    }

    /// The key cancels of queries to this instance are put on.
    pub fn cancel_key(&self) -> String {
        format!("{}/cancel", self.key())
    }

    /// Parses `hybus/svc/<name>/<bridge>/<instance>`; `None` for anything else.
    pub fn parse(key: &str) -> Option<InstanceKey> {
        let mut it = key.strip_prefix("hybus/svc/")?.split('/');
        let (name, bridge, instance) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || hybus_layout_name(name).is_err() || bridge.is_empty() {
            return None;
        }
        Some(InstanceKey { name: name.to_owned(), bridge: bridge.to_owned(), instance: instance.parse().ok()? })
    }
}

/// The key a topic's publications from `bridge` are put on.
pub fn topic_key(name: &str, bridge: &str) -> String {
    format!("hybus/topic/{name}/{bridge}")
}

/// Parses `hybus/topic/<name>/<bridge>` into `(name, bridge)`.
pub fn parse_topic_key(key: &str) -> Option<(&str, &str)> {
    let (name, bridge) = key.strip_prefix("hybus/topic/")?.split_once('/')?;
    if bridge.is_empty() || bridge.contains('/') || hybus_layout_name(name).is_err() {
        return None;
    }
    Some((name, bridge))
}

/// A name from the wire is checked as the daemon checks names.
fn hybus_layout_name(name: &str) -> Result<(), String> {
    hybus_layout::control::check_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_strangers_are_refused() {
        let k = InstanceKey { name: "kv.store".into(), bridge: "host-b".into(), instance: 7 };
        assert_eq!(k.key(), "hybus/svc/kv.store/host-b/7");
        assert_eq!(InstanceKey::parse(&k.key()), Some(k.clone()));
        assert_eq!(InstanceKey::parse("hybus/svc/kv.store/host-b"), None);
        assert_eq!(InstanceKey::parse("hybus/svc/kv.store/host-b/x"), None);
        assert_eq!(InstanceKey::parse(&k.cancel_key()), None);
        assert_eq!(InstanceKey::parse("hybus/svc/kv..store/b/1"), None);
        assert_eq!(InstanceKey::parse("other/svc/a/b/1"), None);
        assert_eq!(parse_topic_key(&topic_key("camera.front", "a")), Some(("camera.front", "a")));
        assert_eq!(parse_topic_key("hybus/topic/camera.front"), None);
        assert_eq!(parse_topic_key("hybus/topic/camera.front/a/b"), None);
    }
}
