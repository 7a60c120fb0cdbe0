//! The access policy with the real daemon and clients of another uid
//! (`nobody`; the tests run as root): what a bus allows by default, and that
//! the policy holds on the data plane too, where a client can write any
//! route id into its ring.

use std::time::Duration;

use hybus_layout::control::{Reply, Request};
use hybus_tests::{DaemonProc, Peer, OPEN_TO_ALL, SOON};

const NOBODY: u32 = 65534;

/// With no rules, only the daemon's own uid (here root, as the tests run)
/// may do anything: another uid can connect, and is refused. A rule for
/// everyone opens the bus.
#[test]
fn only_the_owner_may_do_anything_by_default() {
    let d = DaemonProc::start(None);
    let mut other = Peer::spawn_as(d.socket(), &["serve", "own.nobodys"], NOBODY, NOBODY);
    let line = other.expect_line("error");
    assert!(line.contains("access denied") && line.contains("uid 65534"), "{line}");

    let d = DaemonProc::start(Some(OPEN_TO_ALL));
    let mut other = Peer::spawn_as(d.socket(), &["serve", "own.nobodys"], NOBODY, NOBODY);
    other.expect_line("ready");
    let route = d.connect().resolve("own.nobodys").unwrap();
    assert_eq!(&*d.connect().call(&route, b"ab", SOON).unwrap(), b"ba");
}

/// `nobody` may call and publish under `pub.` only. Route ids of other names
/// written into its ring by hand (a request, a fire, a publication) are
/// refused with "access denied" and reach no one; `pub.` is served.
#[test]
fn the_policy_holds_on_the_data_plane() {
    let d =
        DaemonProc::start(Some("[[policy.rules]]\nuid = 65534\nprefix = \"pub.\"\nallow = [\"call\", \"publish\"]\n"));
    let (_secret, _) = Peer::ready(d.socket(), &["serve", "kv.secret"]);
    let (_open, _) = Peer::ready(d.socket(), &["serve", "pub.time"]);
    let bus = d.connect();
    let secret = bus.resolve("kv.secret").unwrap().id();
    let open = bus.resolve("pub.time").unwrap().id();
    let news = bus.subscribe("kv.news").unwrap();
    let mut root = hybus_tests::raw::Raw::connect(d.socket().to_str().unwrap()).unwrap();
    let news_id = match root.control(Request::Topic { name: "kv.news".into() }).unwrap() {
        Reply::Resolved { route, .. } => route,
        other => panic!("{other:?}"),
    };
    let raw = |route: u32, kind: &str| {
        let mut p = Peer::spawn_as(d.socket(), &["raw", &route.to_string(), kind], NOBODY, NOBODY);
        p.expect_line("ready");
        p.expect_line("answer")
    };
    const DENIED: &str = "answer kind=Error code=9";
    assert_eq!(raw(open, "request"), "answer kind=Response code=0");
    assert_eq!(raw(secret, "request"), DENIED);
    assert_eq!(raw(secret, "fire"), DENIED);
    assert_eq!(raw(news_id, "publish"), DENIED);
    assert!(news.next(Duration::from_millis(200)).unwrap().is_none(), "a refused publication was delivered");
    assert!(d.log_text().contains("refused a send: policy"), "{}", d.log_text());
}

/// Rules may name a group: the connecting process's primary gid, as the
/// kernel reports it.
#[test]
fn a_rule_may_name_a_group() {
    const GROUP: u32 = 4242;
    let d =
        DaemonProc::start(Some(&format!("[[policy.rules]]\ngid = {GROUP}\nprefix = \"grp.\"\nallow = [\"own\"]\n")));
    let mut member = Peer::spawn_as(d.socket(), &["serve", "grp.member"], NOBODY, GROUP);
    member.expect_line("ready");
    let mut other = Peer::spawn_as(d.socket(), &["serve", "grp.other"], NOBODY, NOBODY);
    let line = other.expect_line("error");
    assert!(line.contains("access denied"), "{line}");
}

/// `socket_group` with a mode of 0o660: members of the group may connect,
/// others are refused by the file system before the daemon sees them.
#[test]
fn the_socket_group_decides_who_may_connect() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const GROUP: u32 = 4243;
    let d = DaemonProc::start(Some(&format!("socket_mode = 0o660\nsocket_group = \"{GROUP}\"\n")));
    let meta = std::fs::metadata(d.socket()).unwrap();
    assert_eq!((meta.gid(), meta.permissions().mode() & 0o777), (GROUP, 0o660));
    let mut member = Peer::spawn_as(d.socket(), &["connect", "1"], NOBODY, GROUP);
    member.expect_line("ready");
    let mut other = Peer::spawn_as(d.socket(), &["connect", "1"], NOBODY, NOBODY);
    let line = other.expect_line("error");
    assert!(line.to_lowercase().contains("permission denied"), "{line}");
}

/// Rewrites the daemon's configuration and reloads it (SIGHUP), waiting
/// for the daemon to say it reloaded.
fn reload(d: &DaemonProc, config: &str) {
    let before = d.log_text().matches("configuration reloaded").count();
    std::fs::write(d.config_path(), config).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let done = hybus_tests::eventually(SOON, || {
        (d.log_text().matches("configuration reloaded").count() > before).then_some(())
    });
    assert!(done.is_some(), "no reload in the log:\n{}", d.log_text());
}

/// A subscription the reloaded policy forbids ends: the subscriber's
/// `Subscription::next` fails with "access denied … revoked by a policy
/// reload", and it gets nothing published after.
#[test]
fn a_reload_ends_subscriptions_it_forbids() {
    let d = DaemonProc::start(Some("[[policy.rules]]\nuid = 65534\nprefix = \"news.\"\nallow = [\"subscribe\"]\n"));
    let mut sub = Peer::spawn_as(d.socket(), &["subscribe", "news.a"], NOBODY, NOBODY);
    sub.expect_line("ready");
    let bus = d.connect();
    let publisher = bus.publisher("news.a").unwrap();
    publisher.publish(b"before").unwrap();
    sub.expect_line("got seq=0");
    // Still allowed: a reload that keeps the rule changes nothing.
    reload(&d, "[[policy.rules]]\nuid = 65534\nprefix = \"news.\"\nallow = [\"subscribe\", \"call\"]\n");
    publisher.publish(b"kept").unwrap();
    sub.expect_line("got seq=1");
    reload(&d, "");
    let line = sub.expect_line("error");
    assert!(
        line.contains("access denied") && line.contains("news.a") && line.contains("revoked by a policy reload"),
        "{line}"
    );
}

/// A monitor the reloaded policy forbids stops, with an event that says why.
#[test]
fn a_reload_stops_monitors_it_forbids() {
    let d = DaemonProc::start(Some("[[policy.rules]]\nuid = 65534\nprefix = \"svc.\"\nallow = [\"monitor\"]\n"));
    let mut mon = Peer::spawn_as(d.socket(), &["monitor", "svc."], NOBODY, NOBODY);
    mon.expect_line("ready");
    reload(&d, "[[policy.rules]]\nuid = 65534\nprefix = \"svc.\"\nallow = [\"call\"]\n");
    let line = mon.expect_line("stopped");
    assert!(line.contains("may no longer monitor") && line.contains("revoked by a policy reload"), "{line}");
}

/// A direct channel the reloaded policy forbids (the caller may call, but
/// no longer open channels) is closed, and the caller is told why.
#[test]
fn a_reload_closes_direct_channels_it_forbids() {
    let d =
        DaemonProc::start(Some("[[policy.rules]]\nuid = 65534\nprefix = \"svc.\"\nallow = [\"call\", \"direct\"]\n"));
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.echo"]);
    let mut caller = Peer::spawn_as(d.socket(), &["direct", "svc.echo"], NOBODY, NOBODY);
    let line = caller.expect_line("ready");
    assert!(line.starts_with("ready channel="), "{line}");
    reload(&d, "[[policy.rules]]\nuid = 65534\nprefix = \"svc.\"\nallow = [\"call\"]\n");
    let line = caller.expect_line("closed");
    assert!(line.contains("svc.echo") && line.contains("revoked by a policy reload"), "{line}");
    let bus = d.connect();
    let status = bus.stats().unwrap();
    assert!(status.channels.is_empty(), "{:?}", status.channels);
}

/// A registration the reloaded policy forbids is unregistered: the
/// server's `Service::next` fails with "access denied … revoked by a policy
/// reload", a call it was holding fails with "peer gone", and new calls
/// find no instance.
#[test]
fn a_reload_unregisters_instances_it_forbids() {
    use hybus::Error;
    let d = DaemonProc::start(Some("[[policy.rules]]\nuid = 65534\nprefix = \"svc.\"\nallow = [\"own\"]\n"));
    let mut server = Peer::spawn_as(d.socket(), &["serve", "svc.mine", "hold"], NOBODY, NOBODY);
    server.expect_line("ready");
    let bus = d.connect();
    let route = bus.resolve("svc.mine").unwrap();
    let in_flight = {
        let (bus, route) = (bus.clone(), route.clone());
        std::thread::spawn(move || bus.call(&route, b"held", SOON).map(|a| a.to_vec()))
    };
    server.expect_line("holding 1");
    reload(&d, "");
    let line = server.expect_line("error");
    assert!(
        line.contains("access denied") && line.contains("svc.mine") && line.contains("revoked by a policy reload"),
        "{line}"
    );
    match in_flight.join().unwrap() {
        Err(Error::PeerGone) => {}
        other => panic!("the held call: {other:?}"),
    }
    let gone = hybus_tests::eventually(SOON, || bus.status().ok().filter(|s| s.instances == 0));
    assert!(gone.is_some(), "{:?}", bus.status());
}
