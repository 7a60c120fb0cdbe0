//! The soak: senders that mix every interaction model with random payload
//! sizes, and receivers that check exactly-once, in-order delivery per
//! sender and model.
//!
//! * `soak-recv NAME TOPIC SENDERS` — serves NAME (calls are echoed, fires
//!   counted, streams and channels served) and subscribes to TOPIC. Every
//!   payload is checked ([`payload::parse`]) and its sequence number must be
//!   the next one of its sender and model. A SYNC request is answered with
//!   16 bytes: how many fires and publications of that sender it handled.
//!   Streams and channels are checked in arrival order and then served
//!   each on a thread of its own.
//!   Stdin `report` prints one `report sender=<s> calls=.. fires=.. pubs=..
//!   streams=.. channels=.. citems=..` line per sender, then
//!   `report-end errors=<e>`.
//! * `soak-send ID SEED OPS MAXLEN RT TOPIC TARGET...` — OPS operations:
//!   RT in 10 000 are round trips (60 % calls, 20 % request-streams, 20 %
//!   request-channels), the rest half fires and half publications
//!   (pipelined, at most [`WINDOW`] ahead of the receivers, enforced by
//!   SYNC calls); each to a random target; sizes from
//!   [`Rng::size`]; a quarter of the chunk-sized payloads go as loans. It
//!   checks every answer and item, then waits until the receivers handled
//!   everything and its pool is whole again, prints one `sent target=NAME
//!   calls=.. fires=.. streams=.. channels=.. citems=..` line per target and
//!   `done pubs=.. msgs=.. chunks=<in use>`, and exits.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus::{Bus, BusEvent, Incoming, Sample, StreamRequest};

use crate::payload::{self, model, Header, Rng};
use crate::{stdin_commands, R};

/// Fires and publications a sender may have in flight per receiver.
pub const WINDOW: u64 = 4096;
/// Largest stream or channel item.
const MAX_ITEM: usize = 16 << 10;
const LONG: Duration = Duration::from_secs(30);

const MODELS: [u8; 6] = [model::CALL, model::FIRE, model::PUB, model::STREAM, model::CHANNEL, model::CITEM];

fn slot(m: u8) -> usize {
    MODELS.iter().position(|&x| x == m).unwrap_or(0)
}

/// How many items stream `seq` of `sender` has, and the generator of their sizes.
fn stream_plan(sender: u32, seq: u64) -> (u64, Rng) {
    let mut rng = Rng::new((sender as u64) << 32 ^ seq ^ 0x057a_ea11);
    let n = 1 + rng.below(32);
    (n, rng)
}

struct RecvState {
    next: Vec<[AtomicU64; 6]>,
    errors: AtomicU64,
}

impl RecvState {
    fn error(&self, msg: String) {
        if self.errors.fetch_add(1, Relaxed) < 20 {
            println!("error {msg}");
        }
    }

    /// Checks a payload of `model` and advances its sender's sequence number.
    fn accept(&self, bytes: &[u8], m: u8) -> Option<Header> {
        let Some(h) = payload::parse(bytes) else {
            self.error(format!("corrupt payload of model {m}, {} bytes", bytes.len()));
            return None;
        };
        let Some(next) = self.next.get(h.sender as usize) else {
            self.error(format!("unknown sender {}", h.sender));
            return None;
        };
        if h.model != m {
            self.error(format!("model {} where {m} was expected", h.model));
            return None;
        }
        let c = &next[slot(m)];
        let want = c.load(Relaxed);
        if h.seq != want {
            self.error(format!("sender {} model {m}: seq {} where {want} was expected", h.sender, h.seq));
        }
        c.store(h.seq + 1, Relaxed);
        Some(h)
    }

    fn report(&self) {
        for (s, c) in self.next.iter().enumerate() {
            let v: Vec<u64> = c.iter().map(|x| x.load(Relaxed)).collect();
            println!(
                "report sender={s} calls={} fires={} pubs={} streams={} channels={} citems={}",
                v[0], v[1], v[2], v[3], v[4], v[5]
            );
        }
        println!("report-end errors={}", self.errors.load(Relaxed));
    }
}

pub fn recv(socket: &str, args: &[String]) -> R {
    let [name, topic, senders] = args else {
        return Err("soak-recv NAME TOPIC SENDERS".into());
    };
    let senders: usize = senders.parse()?;
    let st =
        Arc::new(RecvState { next: (0..senders).map(|_| Default::default()).collect(), errors: AtomicU64::new(0) });
    let cmd = st.clone();
    stdin_commands(move |line| {
        if line == "report" {
            cmd.report();
        }
    });
    let bus = Bus::connect_to(socket)?;
    let svc = bus.register(name)?;
    let sub = bus.subscribe(topic)?;
    let pubs = st.clone();
    std::thread::spawn(move || loop {
        match sub.next(Duration::from_secs(3600)) {
            Ok(Some(s)) => {
                pubs.accept(&s, model::PUB);
            }
            Ok(None) => {}
            Err(e) => {
                pubs.error(format!("subscription: {e}"));
                return;
            }
        }
    });
    println!("ready client={}", bus.client_id());
    loop {
        let Some(inc) = svc.next(Duration::from_secs(3600))? else {
            continue;
        };
        match inc {
            Incoming::Request(req) => {
                let p = req.payload();
                if p.len() == payload::HEADER && p[4] == model::SYNC {
                    let sender = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    let mut answer = [0u8; 16];
                    if let Some(c) = st.next.get(sender) {
                        answer[..8].copy_from_slice(&c[slot(model::FIRE)].load(Relaxed).to_le_bytes());
                        answer[8..].copy_from_slice(&c[slot(model::PUB)].load(Relaxed).to_le_bytes());
                    }
                    req.reply(&answer)?;
                    continue;
                }
                st.accept(p, model::CALL);
                let echo = p.to_vec();
                req.reply(&echo)?;
            }
            Incoming::Fire(s) => {
                st.accept(&s, model::FIRE);
            }
            Incoming::Stream(s) => {
                // Checked in arrival order here; served on a thread of its
                // own, so that one slow exchange does not hold up the rest.
                let m = if s.is_channel() { model::CHANNEL } else { model::STREAM };
                let Some(h) = st.accept(s.payload(), m) else {
                    s.fail("bad open")?;
                    continue;
                };
                let st = st.clone();
                std::thread::spawn(move || {
                    let r = if m == model::CHANNEL { serve_channel(&st, h, s) } else { serve_stream(h, s) };
                    if let Err(e) = r {
                        st.error(format!("stream: {e}"));
                    }
                });
            }
        }
    }
}

fn serve_stream(h: Header, mut s: StreamRequest) -> R {
    let (n, mut sizes) = stream_plan(h.sender, h.seq);
    for i in 0..n {
        let item = payload::make(Header { sender: h.sender, model: model::ITEM, seq: i }, sizes.size(MAX_ITEM));
        s.send(&item, LONG)?;
    }
    Ok(s.end()?)
}

fn serve_channel(st: &RecvState, h: Header, mut s: StreamRequest) -> R {
    let mut j = 0;
    while let Some(item) = s.recv(LONG)? {
        let want = Header { sender: h.sender, model: model::CITEM, seq: j };
        if payload::parse(&item) != Some(want) {
            st.error(format!("channel item {j} of sender {} is wrong", h.sender));
        }
        st.next[h.sender as usize][slot(model::CITEM)].fetch_add(1, Relaxed);
        j += 1;
        let echo = item.to_vec();
        drop(item);
        s.send(&echo, LONG)?;
    }
    Ok(s.end()?)
}

fn fail(msg: String) -> Box<dyn std::error::Error> {
    msg.into()
}

#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    calls: u64,
    fires: u64,
    streams: u64,
    channels: u64,
    citems: u64,
}

struct Sender {
    id: u32,
    bus: Bus,
    routes: Vec<hybus::Route>,
    publisher: hybus::Publisher,
    sent: Vec<Sent>,
    pubs: u64,
    /// Deliveries so far, counting every hop end to end (a publication once per receiver).
    msgs: u64,
    buf: Vec<u8>,
}

impl Sender {
    fn header(&self, model: u8, seq: u64) -> Header {
        Header { sender: self.id, model, seq }
    }

    /// Writes the payload into `self.buf[..len]`, or into a loan.
    fn payload(
        &mut self,
        h: Header,
        len: usize,
        loan: bool,
    ) -> Result<Option<hybus::Loan>, Box<dyn std::error::Error>> {
        if loan {
            let mut l = self.bus.loan(len, LONG)?;
            payload::write(&mut l, h);
            return Ok(Some(l));
        }
        payload::write(&mut self.buf[..len], h);
        Ok(None)
    }

    fn fire(&mut self, t: usize, len: usize, loan: bool) -> R {
        let h = self.header(model::FIRE, self.sent[t].fires);
        match self.payload(h, len, loan)? {
            Some(l) => self.bus.fire_loan(&self.routes[t], l)?,
            None => self.bus.fire(&self.routes[t], &self.buf[..len])?,
        }
        self.sent[t].fires += 1;
        self.msgs += 1;
        Ok(())
    }

    fn publish(&mut self, len: usize, loan: bool) -> R {
        let h = self.header(model::PUB, self.pubs);
        match self.payload(h, len, loan)? {
            Some(l) => self.publisher.publish_loan(l)?,
            None => self.publisher.publish(&self.buf[..len])?,
        }
        self.pubs += 1;
        self.msgs += self.routes.len() as u64;
        Ok(())
    }

    fn call(&mut self, t: usize, len: usize, loan: bool) -> R {
        let h = self.header(model::CALL, self.sent[t].calls);
        let answer = match self.payload(h, len, loan)? {
            Some(l) => self.bus.call_loan(&self.routes[t], l, LONG)?,
            None => self.bus.call(&self.routes[t], &self.buf[..len], LONG)?,
        };
        payload::write(&mut self.buf[..len], h);
        if *answer != self.buf[..len] {
            return Err(fail(format!("call {} to target {t}: wrong answer of {} bytes", h.seq, answer.len())));
        }
        self.sent[t].calls += 1;
        self.msgs += 2;
        Ok(())
    }

    fn stream(&mut self, t: usize, len: usize, window: u32) -> R {
        let h = self.header(model::STREAM, self.sent[t].streams);
        let mut s = self.bus.request_stream(&self.routes[t], &payload::make(h, len), window)?;
        let (n, mut sizes) = stream_plan(self.id, h.seq);
        for i in 0..n {
            let item: Sample = s.next(LONG)?.ok_or_else(|| fail(format!("stream {} ended after {i} items", h.seq)))?;
            let want = self.header(model::ITEM, i);
            let size = sizes.size(MAX_ITEM);
            if payload::parse(&item) != Some(want) || item.len() != size {
                return Err(fail(format!("stream {} item {i} is wrong ({} bytes)", h.seq, item.len())));
            }
        }
        if s.next(LONG)?.is_some() {
            return Err(fail(format!("stream {} has more than {n} items", h.seq)));
        }
        self.sent[t].streams += 1;
        self.msgs += n + 2;
        Ok(())
    }

    fn channel(&mut self, t: usize, len: usize, window: u32, rng: &mut Rng) -> R {
        let h = self.header(model::CHANNEL, self.sent[t].channels);
        let mut ch = self.bus.request_channel(&self.routes[t], &payload::make(h, len), window)?;
        let m = 1 + rng.below(16);
        // Up to `window` items in flight: the service can echo them all
        // with the credits we granted, so neither side waits for the other.
        let mut j = 0;
        while j < m {
            let batch: Vec<Vec<u8>> = (j..m.min(j + window as u64))
                .map(|k| payload::make(self.header(model::CITEM, k), rng.size(MAX_ITEM)))
                .collect();
            for item in &batch {
                ch.send(item, LONG)?;
            }
            for item in &batch {
                let echo = ch.next(LONG)?.ok_or_else(|| fail(format!("channel {} ended early", h.seq)))?;
                if *echo != item[..] {
                    return Err(fail(format!("channel {} echo {j} is wrong", h.seq)));
                }
                j += 1;
            }
        }
        ch.end()?;
        if ch.next(LONG)?.is_some() {
            return Err(fail(format!("channel {} sent more than asked", h.seq)));
        }
        self.sent[t].channels += 1;
        self.sent[t].citems += m;
        self.msgs += 2 * m + 3;
        Ok(())
    }

    /// Waits until every receiver has handled all but `slack` of our fires and publications.
    fn sync(&mut self, slack: u64) -> R {
        let start = Instant::now();
        let probe = payload::make(self.header(model::SYNC, 0), payload::HEADER);
        for t in 0..self.routes.len() {
            loop {
                let a = self.bus.call(&self.routes[t], &probe, LONG)?;
                self.msgs += 2;
                let word = |i: usize| u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or_default());
                if a.len() != 16 {
                    return Err(fail(format!("SYNC answer of {} bytes", a.len())));
                }
                let (fires, pubs) = (word(0), word(8));
                if fires > self.sent[t].fires || pubs > self.pubs {
                    return Err(fail(format!("target {t} handled more than was sent: {fires} fires, {pubs} pubs")));
                }
                if self.sent[t].fires - fires <= slack && self.pubs - pubs <= slack {
                    break;
                }
                if start.elapsed() > Duration::from_secs(60) {
                    return Err(fail(format!(
                        "target {t} stuck at {fires}/{} fires, {pubs}/{} pubs",
                        self.sent[t].fires, self.pubs
                    )));
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        }
        Ok(())
    }
}

pub fn send(socket: &str, args: &[String]) -> R {
    let [id, seed, ops, max, rt, topic, targets @ ..] = args else {
        return Err("soak-send ID SEED OPS MAXLEN RT TOPIC TARGET...".into());
    };
    let rt: u64 = rt.parse::<u64>()?.min(10_000);
    if targets.is_empty() {
        return Err("soak-send needs a target".into());
    }
    stdin_commands(|_| {});
    let (id, ops, max): (u32, u64, usize) = (id.parse()?, ops.parse()?, max.parse()?);
    let mut rng = Rng::new(seed.parse()?);
    let bus = Bus::connect_to(socket)?;
    let routes = targets.iter().map(|t| bus.resolve(t)).collect::<Result<Vec<_>, _>>()?;
    let publisher = bus.publisher(topic)?;
    let mut s = Sender {
        id,
        publisher,
        sent: vec![Sent::default(); routes.len()],
        routes,
        bus,
        pubs: 0,
        msgs: 0,
        buf: vec![0; max.max(payload::HEADER)],
    };
    println!("ready client={}", s.bus.client_id());
    let start = Instant::now();
    let mut since_sync = 0;
    let mut spent = [Duration::ZERO; 6];
    for op in 0..ops {
        if op > 0 && op % (ops / 4).max(1) == 0 {
            println!("progress ops={op} secs={:.1} {}", start.elapsed().as_secs_f64(), timings(&spent));
        }
        let t = rng.below(s.routes.len() as u64) as usize;
        let len = rng.size(max);
        let loan = len > hybus::INLINE_PAYLOAD && rng.below(4) == 0;
        let window = 1 + rng.below(16) as u32;
        let t0 = Instant::now();
        let roll = rng.below(10_000);
        let m = if roll >= rt {
            if roll % 2 == 0 {
                s.fire(t, len, loan).map(|_| 0)?
            } else {
                s.publish(len, loan).map(|_| 1)?
            }
        } else {
            match roll * 10 / rt {
                0..=5 => s.call(t, len, loan).map(|_| 2)?,
                6..=7 => s.stream(t, len, window).map(|_| 3)?,
                _ => s.channel(t, len, window, &mut rng).map(|_| 4)?,
            }
        };
        spent[m] += t0.elapsed();
        since_sync += 1;
        if since_sync >= WINDOW / 2 {
            since_sync = 0;
            let t0 = Instant::now();
            s.sync(WINDOW / 2)?;
            spent[5] += t0.elapsed();
        }
    }
    s.sync(0)?;
    println!("spent {}", timings(&spent));
    while let Some(ev) = s.bus.next_event(Duration::ZERO)? {
        if let BusEvent::FireFailed { error, .. } = ev {
            return Err(fail(format!("a fire failed: {error}")));
        }
    }
    let end = Instant::now() + Duration::from_secs(20);
    while s.bus.chunks_in_use() > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    for (t, c) in s.sent.iter().enumerate() {
        println!(
            "sent target={} calls={} fires={} streams={} channels={} citems={}",
            targets[t], c.calls, c.fires, c.streams, c.channels, c.citems
        );
    }
    println!(
        "done pubs={} msgs={} chunks={} secs={:.2}",
        s.pubs,
        s.msgs,
        s.bus.chunks_in_use(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Milliseconds spent per kind of operation, as the progress and final lines print them.
fn timings(spent: &[Duration; 6]) -> String {
    let ms = |i: usize| spent[i].as_millis();
    format!("fire={} pub={} call={} stream={} channel={} sync={} (ms)", ms(0), ms(1), ms(2), ms(3), ms(4), ms(5))
}
