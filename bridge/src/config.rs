//! The bridge's configuration file (TOML), checked strictly: an unknown
//! key is an error, not a silent default. Every key is documented in
//! `dist/hybus-bridge.toml`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::glob::Glob;

/// How this bridge joins the Zenoh network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A Zenoh peer: talks to the endpoints it listens on and connects to.
    #[default]
    Peer,
    /// A Zenoh client: everything goes through the routers it connects to.
    Client,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Peer => "peer",
            Mode::Client => "client",
        }
    }
}

/// How imported (remote) instances share a name with local ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// Remote instances get requests only while no local instance serves the name.
    #[default]
    Local,
    /// Remote instances take part in the balancing like local ones.
    Balance,
}

/// Names that cross the bridge in one direction.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Names {
    /// Service name globs (`kv.*`, `*`).
    #[serde(default)]
    pub services: Vec<Glob>,
    /// Topic names (export: exact names; import: globs).
    #[serde(default)]
    pub topics: Vec<Glob>,
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This bridge's name on the Zenoh network (shown as `remote via <name>`
    /// on the other hosts); default: the Zenoh session id.
    #[serde(default)]
    pub name: Option<String>,
    /// Zenoh endpoints to listen on (`tcp/127.0.0.1:7447`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// Zenoh endpoints to connect to.
    #[serde(default)]
    pub connect: Vec<String>,
    /// Zenoh mode.
    #[serde(default)]
    pub mode: Mode,
    /// A Zenoh JSON5 configuration file for everything else (TLS,
    /// authentication, routers), passed through.
    #[serde(default)]
    pub zenoh_config: Option<PathBuf>,
    /// Local-first or balanced use of imported instances.
    #[serde(default)]
    pub prefer: Prefer,
    /// How long a dead remote bridge's instances stay registered here, in
    /// milliseconds (the Zenoh link lease).
    #[serde(default = "default_liveliness_ms")]
    pub liveliness_timeout_ms: u64,
    /// The longest a forwarded request may take, in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// What the other hosts may reach here.
    #[serde(default)]
    pub export: Vec<Names>,
    /// What of the other hosts becomes a local name here.
    #[serde(default)]
    pub import: Vec<Names>,
}

fn default_liveliness_ms() -> u64 {
    2000
}

fn default_call_timeout_ms() -> u64 {
    30_000
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The TOML is malformed, or a key is unknown or of the wrong type.
    Parse(String),
    /// A value is out of range or contradicts another.
    Invalid(String),
    /// Zenoh refused the configuration derived from it.
    Zenoh(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            Self::Parse(m) => write!(f, "bad configuration: {m}"),
            Self::Invalid(m) => write!(f, "bad configuration: {m}"),
            Self::Zenoh(m) => write!(f, "zenoh refused the configuration: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        let mut c = Config::parse(&text)?;
        // A relative zenoh_config is relative to this file, as a user reads it.
        if let (Some(z), Some(dir)) = (&c.zenoh_config, path.parent()) {
            if z.is_relative() {
                c.zenoh_config = Some(dir.join(z));
            }
        }
        Ok(c)
    }

    /// Parses and checks a configuration from TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if c.liveliness_timeout_ms < 100 {
            return Err(ConfigError::Invalid(format!(
                "liveliness_timeout_ms = {} is too short (at least 100)",
                c.liveliness_timeout_ms
            )));
        }
        if c.call_timeout_ms == 0 {
            return Err(ConfigError::Invalid("call_timeout_ms must be at least 1".into()));
        }
        if let Some(n) = &c.name {
            if n.is_empty() || n.contains(['/', '*', '$', '?', '#']) {
                return Err(ConfigError::Invalid(format!(
                    "name = {n:?}: a bridge name is not empty and has none of / * $ ? #"
                )));
            }
        }
        for e in &c.export {
            if let Some(g) = e.topics.iter().find(|g| g.is_pattern()) {
                return Err(ConfigError::Invalid(format!(
                    "[[export]] topics = [{:?}]: exported topics are exact names (hybusd lists services, not topics)",
                    g.as_str()
                )));
            }
        }
        Ok(c)
    }

    /// Whether the local service `name` may be reached from other hosts.
    pub fn exports_service(&self, name: &str) -> bool {
        self.export.iter().any(|n| n.services.iter().any(|g| g.matches(name)))
    }

    /// The local topics whose publications go to the other hosts.
    pub fn exported_topics(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.export.iter().flat_map(|n| n.topics.iter().map(|g| g.as_str().to_owned())).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Whether the remote service `name` becomes a local name here.
    pub fn imports_service(&self, name: &str) -> bool {
        self.import.iter().any(|n| n.services.iter().any(|g| g.matches(name)))
    }

    /// Whether the remote topic `name` is republished here.
    pub fn imports_topic(&self, name: &str) -> bool {
        self.import.iter().any(|n| n.topics.iter().any(|g| g.matches(name)))
    }

    /// The liveliness timeout.
    pub fn liveliness_timeout(&self) -> Duration {
        Duration::from_millis(self.liveliness_timeout_ms)
    }

    /// The longest a forwarded request may take.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// The Zenoh configuration: `zenoh_config` if given, then `mode`,
    /// `listen` and `connect` from this file, the link lease from
    /// `liveliness_timeout_ms`; multicast and gossip scouting off unless
    /// the Zenoh file mentions them; connecting at start never blocks
    /// (endpoints not reachable yet are retried in the background).
    pub fn zenoh(&self) -> Result<zenoh::Config, ConfigError> {
        let zerr = |e: zenoh::Error| ConfigError::Zenoh(e.to_string());
        let (mut z, text) = match &self.zenoh_config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.clone(), e))?;
                (zenoh::Config::from_json5(&text).map_err(zerr)?, text)
            }
            None => (zenoh::Config::default(), String::new()),
        };
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        z.insert_json5("mode", &format!("\"{}\"", self.mode.as_str())).map_err(zerr)?;
        if !self.listen.is_empty() {
            z.insert_json5("listen/endpoints", &json(&self.listen)).map_err(zerr)?;
        }
        if !self.connect.is_empty() {
            z.insert_json5("connect/endpoints", &json(&self.connect)).map_err(zerr)?;
        }
        if !text.contains("multicast") {
            z.insert_json5("scouting/multicast/enabled", "false").map_err(zerr)?;
        }
        if !text.contains("gossip") {
            z.insert_json5("scouting/gossip/enabled", "false").map_err(zerr)?;
        }
        if !text.contains("exit_on_failure") {
            z.insert_json5("connect/exit_on_failure", "false").map_err(zerr)?;
        }
        if !text.contains("timeout_ms") {
            z.insert_json5("connect/timeout_ms", "-1").map_err(zerr)?;
        }
        z.insert_json5("transport/link/tx/lease", &self.liveliness_timeout_ms.to_string()).map_err(zerr)?;
        Ok(z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let c = Config::parse(
            r#"
            name = "host-a"
            listen = ["tcp/127.0.0.1:7447"]
            connect = ["tcp/127.0.0.1:7448"]
            mode = "peer"
            prefer = "balance"
            liveliness_timeout_ms = 1500
            [[export]]
            services = ["kv.*"]
            topics = ["camera.front"]
            [[import]]
            services = ["db.*"]
            topics = ["sensor.*"]
            "#,
        )
        .unwrap();
        assert_eq!(c.prefer, Prefer::Balance);
        assert!(c.exports_service("kv.store") && !c.exports_service("db.main"));
        assert!(c.imports_service("db.main") && !c.imports_service("kv.store"));
        assert!(c.imports_topic("sensor.temp") && !c.imports_topic("camera.front"));
        assert_eq!(c.exported_topics(), vec!["camera.front".to_string()]);
        let z = c.zenoh().unwrap();
        assert_eq!(z.get_json("scouting/multicast/enabled").unwrap(), "false");
        assert_eq!(z.get_json("scouting/gossip/enabled").unwrap(), "false");
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/hybus-bridge.toml")).unwrap();
        let c = Config::parse(&text).unwrap();
        assert_eq!((c.prefer, c.liveliness_timeout_ms, c.call_timeout_ms), (Prefer::Local, 2000, 30_000));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(matches!(Config::parse("lissen = []"), Err(ConfigError::Parse(_))));
        assert!(matches!(Config::parse("[[export]]\nservice = [\"a\"]"), Err(ConfigError::Parse(_))));
        assert!(matches!(Config::parse("mode = \"router\""), Err(ConfigError::Parse(_))));
        assert!(matches!(Config::parse("liveliness_timeout_ms = 5"), Err(ConfigError::Invalid(_))));
        assert!(matches!(Config::parse("[[export]]\ntopics = [\"cam.*\"]"), Err(ConfigError::Invalid(_))));
        // Nothing is exported or imported by default.
        let c = Config::parse("").unwrap();
        assert!(!c.exports_service("a") && !c.imports_service("a") && !c.imports_topic("a"));
    }
}
