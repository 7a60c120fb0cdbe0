//! `hybus-bridge`: services and topics of several hosts' hybus buses,
//! joined over [Zenoh](https://zenoh.io).
//!
//! The bridge is an ordinary client of its host's `hybusd` and a Zenoh
//! peer (or client). It exports local service instances and topics that
//! its configuration names, and imports those of other hosts' bridges:
//!
//! * [`export`] — a queryable, a subscriber and a liveliness token per
//!   exported instance; queries become local calls, puts local fires;
//! * [`import`] — a *remote* instance registered here per instance another
//!   bridge exports, used only while no local instance serves the name
//!   (local first); requests become Zenoh queries;
//! * [`topics`] — exported publications put on Zenoh, imported ones
//!   republished locally, never back;
//! * [`status`] — `hybus-bridge.<name>`, a local service that answers with
//!   the bridge's state (Zenoh connected or waiting, what it exports and imports);
//! * [`config`] — the TOML file; [`keys`] — the Zenoh key space;
//!   [`wire`] — deadlines and error kinds on the wire; [`payload`] —
//!   payloads across, copied once; [`ratelog`] — limits on the warnings
//!   another host can cause.
//!
//! # Examples
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use hybus_bridge::{Bridge, Config};
//! let config = Config::parse(r#"
//!     listen = ["tcp/127.0.0.1:7447"]
//!     [[export]]
//!     services = ["kv.*"]
//! "#)?;
//! let bridge = Bridge::start(config, hybus::default_socket_path())?;
//! bridge.wait_zenoh(&std::sync::atomic::AtomicBool::new(false));
//! # Ok(()) }
//! ```
#![deny(unsafe_code, missing_docs, missing_debug_implementations)]

pub mod bench;
pub mod bridge;
pub mod config;
pub mod export;
pub mod glob;
pub mod import;
pub mod keys;
pub mod payload;
pub mod ratelog;
pub mod status;
pub mod topics;
pub mod wire;
pub mod workers;

pub use bridge::{Bridge, StartError};
pub use config::Config;
