//! `hostile CASE [NAME] [other=ID]`: a client that speaks the protocol by
//! hand and then writes into its own tx ring what no honest client would.
//!
//! It connects with [`hybus_tests::raw::Raw`] (the Hello handshake by hand,
//! the segments of the Welcome mapped as `hybus::Bus` maps them), sets up
//! what the case needs, prints `sent`, and then watches its control socket: `closed`
//! if the daemon hung up within 10 s, `still-open` if not. Cases:
//!
//! * `bad-route` — a Request to a route id the daemon never handed out;
//! * `bad-offset NAME` — a Request whose chunk lies beyond the end of its pool;
//! * `misaligned NAME` — a chunk offset inside the pool but not on a chunk start;
//! * `too-long NAME` — a chunk length larger than its chunk;
//! * `foreign NAME other=ID` — a chunk of client ID's pool sent as its own;
//! * `double NAME` — the same chunk sent twice (NAME holds the first);
//! * `release-unheld` — a Release of one of its own chunks never lent;
//! * `release-other other=ID` — a Release of a chunk of ID's pool never received;
//! * `tail-ahead` — the tx ring's tail word written far ahead of head;
//! * `bad-kind NAME` — kind byte 200;
//! * `bad-flags NAME` — flag bit 0x80;
//! * `credit-caller NAME` — opens a channel to NAME (which grants nothing)
//!   and sends it an item without credit;
//! * `credit-server NAME` — registers NAME, prints `ready`, waits for a
//!   request-stream and sends one item more than the caller's window.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hybus_layout::control::{Reply, Request};
use hybus_layout::descriptor::{flags, STREAM_CHANNEL};
use hybus_layout::{ChunkRef, Descriptor, Kind, Wake};
use hybus_tests::raw::{self, Raw};

use crate::{arg, stdin_commands, R};

pub fn run(socket: &str, args: &[String]) -> R {
    stdin_commands(|_| {});
    let case = args.first().ok_or("hostile CASE [NAME] [other=ID]")?.as_str();
    let name = args.get(1).filter(|a| !a.contains('='));
    let other: Option<u32> = arg(args, "other").map(str::parse).transpose()?;
    let mut r = Raw::connect(socket)?;
    let me = r.welcome.client_id;
    let route = match name {
        Some(n) if case != "credit-server" => r.resolve(n)?,
        _ => 0,
    };
    println!("ready client={me}");
    let req = |corr: u64| Descriptor::new(Kind::Request, route, corr);
    match case {
        "bad-route" => {
            let d = Descriptor::new(Kind::Request, 0x7fff_fff0, 1);
            r.send(&d.with_inline(b"hello").ok_or("inline")?)?;
        }
        "bad-offset" => {
            let beyond = r.geometry.size() + 4096;
            r.send(&req(1).with_chunk(ChunkRef { segment: me, len: 8, offset: beyond }))?;
        }
        "misaligned" => {
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(ChunkRef { offset: c.offset + 8, ..c }))?;
        }
        "too-long" => {
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(ChunkRef { len: 1 << 30, ..c }))?;
        }
        "foreign" => {
            let other = other.ok_or("foreign needs other=ID")?;
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(ChunkRef { segment: other, ..c }))?;
        }
        "double" => {
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(c))?;
            r.send(&req(2).with_chunk(c))?;
        }
        "release-unheld" => {
            let c = r.own_chunk(100)?;
            r.send(&Descriptor::new(Kind::Release, 0, 0).with_chunk(c))?;
        }
        "release-other" => {
            let other = other.ok_or("release-other needs other=ID")?;
            let c = r.own_chunk(100)?;
            r.send(&Descriptor::new(Kind::Release, 0, 0).with_chunk(ChunkRef { segment: other, ..c }))?;
        }
        "tail-ahead" => {
            let head = r.tx_word(raw::HEAD).load(Ordering::Acquire);
            let cap = r.welcome.ring_capacity;
            r.tx_word(raw::TAIL).store(head.wrapping_add(cap * 4 + 5), Ordering::Release);
            r.tx_bell.wake();
        }
        "bad-kind" => {
            let mut d = req(1);
            d.kind = 200;
            r.send(&d)?;
        }
        "bad-flags" => {
            let mut d = req(1);
            d.flags |= 0x80;
            r.send(&d)?;
        }
        "credit-caller" => {
            let open = Descriptor::new(Kind::StreamOpen, route, 7).with_aux(4 | STREAM_CHANNEL);
            r.send(&open.with_inline(b"open").ok_or("inline")?)?;
            let item = Descriptor::new(Kind::StreamItem, route, 7);
            r.send(&item.with_inline(b"uninvited").ok_or("inline")?)?;
        }
        "credit-server" => {
            let name = name.ok_or("credit-server NAME")?;
            let (instance, _) = match r.control(Request::Register {
                name: name.clone(),
                version: 1,
                weight: 1,
                exclusive: false,
                replace: false,
            })? {
                Reply::Registered { instance, route } => (instance, route),
                other => return Err(format!("unexpected reply {other:?}").into()),
            };
            println!("registered instance={instance}");
            let open = r.wait_for(Kind::StreamOpen, Duration::from_secs(20))?;
            let window = open.aux & 0xffff_ffff;
            let mut items = Vec::new();
            for i in 0..=window {
                let mut d = Descriptor::new(Kind::StreamItem, instance, open.correlation)
                    .with_inline(format!("item-{i}").as_bytes())
                    .ok_or("inline")?;
                d.flags |= flags::SERVER;
                items.push(d);
            }
            // One batch, published with one tail store: the daemon sees the
            // overrun before the caller could have granted more credit.
            r.send_batch(&items)?;
        }
        other => return Err(format!("unknown case {other}").into()),
    }
    println!("sent");
    let closed = r.wait_closed(Duration::from_secs(10));
    if closed {
        println!("closed");
    } else {
        // Say what the daemon did instead, for the failure message.
        let mut got = Vec::new();
        while let Ok(Some(d)) = r.rx.pop() {
            got.push(format!("{:?}(aux={})", Kind::from_u8(d.kind), d.aux));
        }
        println!("still-open got=[{}]", got.join(","));
    }
    Ok(())
}
