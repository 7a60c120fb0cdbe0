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
