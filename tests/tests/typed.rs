//! Typed payloads (`hybus::typed`, rkyv) between separate connections of
//! the real daemon, brokered and over a direct channel: the same value
//! comes out as went in, whatever its size (inline or in a chunk), and
//! bytes that are not the type are refused as a bad payload, not trusted.

use hybus::{rkyv, Error, Incoming};
use hybus_tests::{DaemonProc, SOON};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = hybus::rkyv)]
struct Order {
    id: u64,
    items: Vec<(String, u32)>,
    note: Option<String>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
#[rkyv(crate = hybus::rkyv)]
enum Verdict {
    Accepted { total: u32 },
    Refused(String),
}

#[test]
fn typed_values_cross_the_bus_and_bad_bytes_are_refused() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("typed.orders").unwrap();
    let serving = std::thread::spawn(move || {
        // Three calls each way, brokered and direct.
        for _ in 0..6 {
            let Ok(Some(Incoming::Request(req))) = svc.next(SOON) else { panic!("no request") };
            // The archived form, read in place after its check...
            let verdict = match hybus::typed::checked::<Order>(req.payload()) {
                Ok(order) => Verdict::Accepted { total: order.items.iter().map(|item| item.1.to_native()).sum() },
                Err(e) => Verdict::Refused(e.to_string()),
            };
            req.reply(&hybus::typed::to_payload(&verdict).unwrap()).unwrap();
        }
    });
    let caller = d.connect();
    let route = caller.resolve("typed.orders").unwrap();
    let small = Order { id: 1, items: vec![("tea".into(), 2)], note: None };
    let large = Order {
        id: 2,
        items: (0..500).map(|i| (format!("item-{i}"), i)).collect(),
        note: Some("a chunk's worth".into()),
    };
    for direct in [false, true] {
        if direct {
            caller.request_direct(&route).unwrap();
            assert!(caller.is_direct(&route));
        }
        for order in [&small, &large] {
            let answer = caller.call(&route, &hybus::typed::to_payload(order).unwrap(), SOON).unwrap();
            // ...or decoded into an owned value.
            let total = order.items.iter().map(|(_, n)| n).sum();
            assert_eq!(answer.decode::<Verdict>().unwrap(), Verdict::Accepted { total }, "direct: {direct}");
        }
        let answer = caller.call(&route, b"these bytes are no Order at all", SOON).unwrap();
        match answer.decode::<Verdict>().unwrap() {
            Verdict::Refused(why) => assert!(why.contains("bad payload"), "{why}"),
            other => panic!("garbage accepted: {other:?}"),
        }
        assert!(matches!(answer.decode::<Order>(), Err(Error::BadPayload(_))));
    }
    serving.join().unwrap();
}
