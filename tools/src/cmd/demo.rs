//! `hybusctl demo`: an embedded daemon, demo services in their own
//! processes, traffic through every interaction model, a latency table.

use std::time::{Duration, Instant};

use anyhow::Context;
use hybus::{Bus, BusOptions, IdleStrategy};
use hybus_benches::Percentiles;

use crate::table::{ns, Table};
use crate::workers::Worker;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Round trips per row of the latency table.
    #[arg(long, default_value = "20000")]
    round_trips: u64,
}

const T: Duration = Duration::from_secs(10);

fn p(samples: &mut [u64]) -> Percentiles {
    Percentiles::from_samples(samples).unwrap_or(Percentiles { count: 0, p50: 0, p99: 0, p999: 0, max: 0, mean: 0.0 })
}

/// Runs the demo.
pub fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("hybusctl-demo-{}", std::process::id()));
    let socket = dir.join("bus.sock");
    // The camera → detector pair is configured to go direct: once the
    // camera resolves the detector, the daemon steps out of their path.
    let mut config = hybusd::Config::default();
    config.direct.push(hybusd::config::DirectPair {
        caller: "camera.front".into(),
        service: "camera.detector".into(),
        uid: None,
    });
    let daemon = hybusd::Embedded::start(&socket, config).context("cannot start the embedded daemon")?;
    let bus = Bus::connect_with(BusOptions { path: Some(socket.clone()), label: "demo".into(), ..Default::default() })?;
    let status = bus.status()?;
    println!("hybus demo — embedded hybusd on {} ({} event loop)", socket.display(), status.backend);

    // Services, each in its own process.
    let kv = Worker::start(&socket, "kv", "kv.store", None, "default")?;
    let detector = Worker::start(&socket, "detector", "camera.detector", None, "default")?;
    let echo = Worker::start(&socket, "echo", "demo.echo", None, "spin")?;
    let mut displays = Vec::new();
    for i in 1..=3 {
        displays.push(Worker::start(&socket, "subscriber", "camera.frames", Some(&format!("display.{i}")), "default")?);
    }
    let list = bus.list()?;
    println!(
        "started {} services in separate processes: {}",
        list.len(),
        list.iter().map(|s| format!("{} (pid {})", s.name, s.instances[0].pid)).collect::<Vec<_>>().join(", ")
    );

    // Request/response.
    let kv_route = bus.resolve("kv.store")?;
    let t = Instant::now();
    let ok = bus.call(&kv_route, b"set colour blue", T)?;
    let got = bus.call(&kv_route, b"get colour", T)?;
    println!(
        "request/response: set colour=blue → {}, get colour → {} ({} for both round trips)",
        String::from_utf8_lossy(&ok),
        String::from_utf8_lossy(&got),
        ns(t.elapsed().as_nanos() as u64)
    );
    match bus.call(&kv_route, b"get shape", T) {
        Err(e) => println!("  a typed error comes back as such: get shape → {e}"),
        Ok(_) => anyhow::bail!("kv.store answered a missing key"),
    }
    bus.call(&kv_route, b"set size large", T)?;

    // Fire-and-forget.
    for i in 0..1000 {
        bus.fire(&kv_route, format!("log line {i}").as_bytes())?;
    }
    let logs = bus.call(&kv_route, b"logs", T)?;
    println!("fire-and-forget: 1000 log lines fired at kv.store, which counted {}", String::from_utf8_lossy(&logs));

    // Request-stream.
    let mut scan = bus.request_stream(&kv_route, b"scan", 2)?;
    let mut entries = Vec::new();
    while let Some(e) = scan.next(T)? {
        entries.push(String::from_utf8_lossy(&e).into_owned());
    }
    println!(
        "request-stream: kv.store scan streamed {} entries with 2 credits at a time: {}",
        entries.len(),
        entries.join(", ")
    );

    // Request-channel.
    let echo_route = bus.resolve("demo.echo")?;
    let mut ch = bus.request_channel(&echo_route, b"", 8)?;
    for w in ["zero", "copy", "both", "ways"] {
        ch.send(w.as_bytes(), T)?;
    }
    ch.end()?;
    let mut back = Vec::new();
    while let Some(item) = ch.next(T)? {
        back.push(String::from_utf8_lossy(&item).into_owned());
    }
    println!("request-channel: sent 4 items to demo.echo, got back: {}", back.join(" "));

    // Several calls in flight from one thread, collected later.
    let t = Instant::now();
    let pending = (0..16u32)
        .map(|i| bus.begin_call(&echo_route, format!("call {i}").as_bytes(), T))
        .collect::<hybus::Result<Vec<_>>>()?;
    let mut answered = 0;
    for (i, call) in pending.into_iter().enumerate() {
        anyhow::ensure!(&*call.wait()? == format!("call {i}").as_bytes(), "echo answered the wrong call");
        answered += 1;
    }
    println!(
        "pipelining: 16 calls in flight from one thread to demo.echo, {answered} answers collected in order ({})",
        ns(t.elapsed().as_nanos() as u64)
    );

    // Zero-copy calls over a direct channel, and pub/sub fan-out.
    let camera = bus.register("camera.front")?;
    let det = bus.resolve("camera.detector")?;
    if bus.is_direct(&det) {
        println!("direct channel: camera.front → camera.detector (configured pair); the daemon is out of their path");
    }
    let frames = bus.publisher("camera.frames")?;
    let frame_len = 1 << 20;
    let t = Instant::now();
    let mut answer = String::new();
    for i in 0..20u8 {
        let mut loan = bus.loan(frame_len, T)?;
        loan.fill(i);
        answer = String::from_utf8_lossy(&bus.call_loan(&det, loan, T)?).into_owned();
        let mut loan = bus.loan(64 << 10, T)?;
        loan.fill(i);
        frames.publish_loan(loan)?;
    }
    let elapsed = t.elapsed();
    let counts = (1..=3)
        .map(|i| -> anyhow::Result<u64> {
            let r = bus.resolve(&format!("display.{i}"))?;
            let end = Instant::now() + T;
            loop {
                let c = bus.call(&r, b"count", T)?;
                let n = u64::from_le_bytes(c.get(..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]));
                if n >= 20 || Instant::now() > end {
                    return Ok(n);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    println!(
        "zero-copy: 20 frames of 1 MiB sent to camera.detector ({answer}) and 20 of 64 KiB published to 3 displays (each got {:?}) in {}; nobody copied a payload byte",
        counts,
        ns(elapsed.as_nanos() as u64)
    );
    let in_use = crate::cmd::demo::settle(&bus);
    println!("  every chunk came back to the sender's pool: {in_use} still lent");

    // Hot replacement.
    let kv2 = Worker::start(&socket, "kv", "kv.store", None, "default")?;
    let list = bus.list()?;
    let insts = list.iter().find(|s| s.name == "kv.store").map_or(0, |s| s.instances.len());
    drop(kv);
    let mut errors = 0;
    for _ in 0..100 {
        if bus.call(&kv_route, b"logs", T).is_err() {
            errors += 1;
        }
    }
    println!(
        "lifecycle: a second kv.store came up ({insts} instances), the first was killed; 100 calls after that: {errors} failed (the new instance has its own, empty store)"
    );

    // Latency table.
    let rt = a.round_trips;
    let spin = hybus_benches::worker::idle_strategy("spin").map_err(anyhow::Error::msg)?;
    let fast = Bus::connect_with(BusOptions {
        path: Some(socket.clone()),
        label: "demo-latency".into(),
        idle: spin,
        reconnect: false,
    })?;
    let mut brokered = Vec::with_capacity(rt as usize);
    for i in 0..rt + 1000 {
        let t = Instant::now();
        let r = fast.call(&echo_route, &i.to_le_bytes(), T)?;
        let e = t.elapsed().as_nanos() as u64;
        anyhow::ensure!(r[..] == i.to_le_bytes(), "echo answered the wrong payload");
        if i >= 1000 {
            brokered.push(e);
        }
    }
    // The same calls over a direct channel, both sides spinning (two parties).
    let direct_echo = Worker::start(&socket, "echo", "demo.echo-direct", None, "busy")?;
    let busy = Bus::connect_with(BusOptions {
        path: Some(socket.clone()),
        label: "demo-direct".into(),
        idle: IdleStrategy::BUSY,
        reconnect: false,
    })?;
    let direct_route = busy.resolve("demo.echo-direct")?;
    busy.request_direct(&direct_route)?;
    let mut direct = Vec::with_capacity(rt as usize);
    for i in 0..rt + 1000 {
        let t = Instant::now();
        let r = busy.call(&direct_route, &i.to_le_bytes(), T)?;
        let e = t.elapsed().as_nanos() as u64;
        anyhow::ensure!(r[..] == i.to_le_bytes(), "echo answered the wrong payload");
        if i >= 1000 {
            direct.push(e);
        }
    }
    // What `hybusctl stats` shows of that channel: the daemon is not in its
    // path, but reads the counters both sides keep in the channel segment.
    let seen = busy.stats()?.channels.into_iter().find(|c| c.service == "demo.echo-direct");
    drop((busy, direct_echo));
    let (mut uds, placed) = hybus_benches::limits::uds_pingpong_2p_placed(rt, 8).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut relay = hybus_benches::limits::cacheline_relay_3p(rt).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut table = Table::new(&["8-byte round trip", ">p50", ">p99", ">p99.9"]);
    let mut row = |name: &str, s: &mut Vec<u64>| {
        let q = p(s);
        table.row(vec![name.into(), ns(q.p50), ns(q.p99), ns(q.p999)]);
    };
    row("hybus brokered (via hybusd)", &mut brokered);
    row("hybus direct channel", &mut direct);
    row("Unix socket, 2 processes", &mut uds);
    row("machine floor: 3-process cache-line relay", &mut relay);
    println!("\nlatency, {rt} round trips each (brokered: 3 parties polling with yield; direct: 2 spinning):");
    print!("{}", table.render());
    println!("{}", uds_placement(&placed, cpus()));
    if let Some(c) = seen {
        println!(
            "the direct channel in hybusctl stats: {} requests and {} answers went over it, {} in flight, RTT p50 {} over the {} calls its caller timed (one in 64)",
            c.a_messages,
            c.b_messages,
            c.a_in_flight,
            ns(c.latency_ns[0]),
            c.timed_calls
        );
    }

    drop((kv2, detector, echo, displays, fast, camera, bus));
    daemon.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ndemo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Where the two parties of the Unix-socket baseline ran, and why the
/// brokered row can be slower than it.
fn uds_placement(p: &hybus_benches::limits::Placement, cpus: usize) -> String {
    use hybus_benches::limits::Placement;
    let place = format!(
        "Unix socket baseline: the caller ran on CPU {}, the echo on CPU {}",
        Placement::cpus(p.near),
        Placement::cpus(p.far)
    );
    if p.same_cpu() {
        format!(
            "{place} (the same one: each message a context switch, not a cross-CPU wake-up). \
             With {cpus} usable CPU(s), the brokered path's three processes (caller, hybusd, echo) cannot each have a CPU, \
             so a hop can wait for a time slice and it can be slower than this same-CPU ping-pong."
        )
    } else {
        format!(
            "{place}. With {cpus} usable CPU(s) the brokered path's three processes (caller, hybusd, echo) \
             share the CPUs{}",
            if cpus < 3 {
                ": a hop can wait for a time slice, so it can be slower than a socket ping-pong."
            } else {
                "."
            }
        )
    }
}

/// The CPUs this process may run on.
fn cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).count())
        .unwrap_or(1)
}

/// Waits briefly for every chunk lent out by `bus` to come back; returns how many are still out.
pub fn settle(bus: &Bus) -> u32 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let n = bus.chunks_in_use();
        if n == 0 || Instant::now() > end {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
