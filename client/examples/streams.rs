//! Streams and channels: a request-stream (the service sends items, the
//! caller's credits pace it) and a request-channel (items both ways).

use std::time::Duration;

use hybus::{Bus, ServiceError};

const T: Duration = Duration::from_secs(2);

fn main() -> Result<(), hybus::Error> {
    let server = Bus::connect()?;
    let svc = server.register("example.streams")?;
    std::thread::scope(|s| -> Result<(), hybus::Error> {
        let serving = s.spawn(|| {
            svc.serving()
                // Streams and channels go to their own handler; the stream
                // ends when it returns Ok, and fails with its Err.
                .on_stream(|st| {
                    if st.is_channel() {
                        // A channel: answer each of the caller's items, until it ends its side.
                        while let Some(item) = st.recv(T)? {
                            st.send(&item.to_ascii_uppercase(), T)?;
                        }
                        return Ok(());
                    }
                    let n: u32 = std::str::from_utf8(st.payload())?.parse()?;
                    if n > 1000 {
                        return Err(ServiceError::new(413, format!("{n} squares is too many (at most 1000)")));
                    }
                    for i in 1..=n {
                        // Waits for a credit when the caller's window is used up.
                        st.send(format!("{}", i * i).as_bytes(), T)?;
                    }
                    Ok(())
                })
                .run(|_| Err("call with a stream or a channel".into()))
        });

        let caller = Bus::connect()?;
        let route = caller.resolve("example.streams")?;

        // A request-stream with a window of 4 items in flight.
        let mut squares = caller.request_stream(&route, b"10", 4)?;
        let mut got = Vec::new();
        while let Some(item) = squares.next(T)? {
            got.push(String::from_utf8_lossy(&item).into_owned());
        }
        println!("stream: {}", got.join(" "));
        let mut too_many = caller.request_stream(&route, b"5000", 4)?;
        match too_many.next(T) {
            Err(e) => println!("stream refused: {e}"),
            Ok(item) => println!("unexpected: {item:?}"),
        }

        // A request-channel: items go both ways.
        let mut ch = caller.request_channel(&route, b"", 8)?;
        for word in ["both", "ways", "at", "once"] {
            ch.send(word.as_bytes(), T)?;
        }
        ch.end()?;
        let mut back = Vec::new();
        while let Some(item) = ch.next(T)? {
            back.push(String::from_utf8_lossy(&item).into_owned());
        }
        println!("channel: {}", back.join(" "));

        svc.drain()?;
        serving.join().expect("service thread")
    })
}
