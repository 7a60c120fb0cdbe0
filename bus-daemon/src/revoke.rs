//! A policy reload applied to what exists, not only to what comes next.
//!
//! The policy is asked when a client subscribes, monitors, asks for a
//! direct channel or registers; what it allowed then used to live on after
//! a SIGHUP whose new policy forbids it (a subscriber went on receiving a
//! topic it may no longer read). After a successful reload
//! [`Daemon::revoke_forbidden`] asks again for everything each client
//! holds, and ends at once what is no longer allowed, telling the client
//! why:
//!
//! * a subscription: dropped from the topic's subscribers,
//!   [`Event::Unsubscribed`] (the client's `Subscription::next` then fails
//!   with "access denied");
//! * a monitor: stopped, [`Event::MonitorStopped`];
//! * a direct channel whose caller may no longer call the service (or, for
//!   a channel it asked for, open a direct channel to it): closed by the
//!   usual path ([`Event::DirectClosed`], both sides fall back to the
//!   daemon, where the data-plane check refuses what is not allowed);
//! * a registration: [`Event::Unregistered`], its channels closed, and the
//!   instance unregistered by the usual path. Calls it was answering fail
//!   at once with "peer gone", as when a server unregisters: it may no
//!   longer serve the name, so an answer it sent after the reload would
//!   come from a server the policy no longer trusts with it; draining
//!   instead would let it go on answering for as long as it liked.

use hybus_layout::control::{DaemonMessage, Event};

use crate::config::{Action, Who};
use crate::daemon::Daemon;

/// The end of every reason given: what the client library looks for.
pub const REVOKED: &str = "revoked by a policy reload";

impl Daemon {
    /// Ends, for every client the policy does not trust with everything,
    /// what the (just reloaded) policy no longer allows. See the module docs.
    pub(crate) fn revoke_forbidden(&mut self) {
        let ids: Vec<u32> =
            self.sessions.iter().filter(|(_, s)| s.data.is_some() && !s.trusted).map(|(id, _)| *id).collect();
        for id in ids {
            self.revoke_subscriptions(id);
            self.revoke_monitor(id);
            self.revoke_channels(id);
            self.revoke_instances(id);
        }
    }

    /// Whether client `id` may still do `action` on `name`.
    fn still_allowed(&self, id: u32, action: Action, name: &str) -> bool {
        let who = self.sessions.get(&id).map_or(Who { uid: u32::MAX, gid: u32::MAX }, |s| s.creds.who());
        self.config.policy.allows(who, self.owner, action, name)
    }

    fn uid_of(&self, id: u32) -> u32 {
        self.sessions.get(&id).map_or(u32::MAX, |s| s.creds.uid)
    }

    fn revoke_subscriptions(&mut self, id: u32) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let ended: Vec<(u32, String)> = s
            .subscriptions
            .iter()
            .filter_map(|&route| self.registry.route(route).map(|r| (route, r.name.clone())))
            .filter(|(_, name)| !self.still_allowed(id, Action::Subscribe, name))
            .collect();
        let uid = self.uid_of(id);
        for (route, name) in ended {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.subscriptions.retain(|&r| r != route);
            }
            if let Some(r) = self.registry.route_mut(route) {
                r.subscribers.retain(|&c| c != id);
            }
            let reason = format!("uid {uid} may no longer subscribe to {name:?}: {REVOKED}");
            tracing::info!(client = id, topic = name, "subscription {REVOKED}");
            self.send(id, &DaemonMessage::Event(Event::Unsubscribed { route, reason }), &[]);
        }
    }

    fn revoke_monitor(&mut self, id: u32) {
        let Some(prefix) = self.sessions.get(&id).and_then(|s| s.monitor.clone()) else {
            return;
        };
        if self.still_allowed(id, Action::Monitor, &prefix) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.monitor = None;
        }
        self.monitors = self.monitors.saturating_sub(1);
        let reason = format!("uid {} may no longer monitor {prefix:?}: {REVOKED}", self.uid_of(id));
        tracing::info!(client = id, prefix, "monitor {REVOKED}");
        self.send(id, &DaemonMessage::Event(Event::MonitorStopped { reason }), &[]);
    }

    fn revoke_channels(&mut self, id: u32) {
        let ended: Vec<(u32, String)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.a == id)
            .filter(|(_, c)| {
                !self.still_allowed(id, Action::Call, &c.service)
                    || (c.asked && !self.still_allowed(id, Action::Direct, &c.service))
            })
            .map(|(ch, c)| (*ch, c.service.clone()))
            .collect();
        let uid = self.uid_of(id);
        for (ch, service) in ended {
            self.close_channel(ch, &format!("uid {uid} may no longer call {service:?} directly: {REVOKED}"), None);
        }
    }

    fn revoke_instances(&mut self, id: u32) {
        let ended: Vec<(u32, u32, String)> = self
            .registry
            .instances_of(id)
            .into_iter()
            .filter_map(|inst| {
                let i = self.registry.instance(inst)?;
                Some((inst, i.route, self.registry.route(i.route)?.name.clone()))
            })
            .filter(|(_, _, name)| !self.still_allowed(id, Action::Own, name))
            .collect();
        let uid = self.uid_of(id);
        for (instance, route, name) in ended {
            let reason = format!("uid {uid} may no longer own {name:?}: {REVOKED}");
            tracing::info!(client = id, name, instance, "registration {REVOKED}");
            self.send(id, &DaemonMessage::Event(Event::Unregistered { instance, route, reason: reason.clone() }), &[]);
            // Its callers' channels first, with the reason (the policy
            // decides by name, so every instance of it this client has goes).
            let chans: Vec<u32> =
                self.channels.iter().filter(|(_, c)| c.b == id && c.route == route).map(|(ch, _)| *ch).collect();
            for ch in chans {
                self.close_channel(ch, &reason, None);
            }
            self.remove_instance(instance);
        }
    }
}
