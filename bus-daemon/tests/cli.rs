//! The `hybusd` binary's command line: help, bad flags and bad configs fail
//! with one clear sentence and a non-zero exit. (Also makes cargo build the
//! binary for the workspace's end-to-end tests.)

use std::process::Command;

fn hybusd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hybusd"))
}

#[test]
fn help_mentions_the_socket_flag() {
    let out = hybusd().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--socket") && text.contains("--config"), "{text}");
}

#[test]
fn bad_config_is_one_clear_error() {
    let dir = std::env::temp_dir().join(format!("hybusd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "ring_capacity = 1000\n").unwrap();
    let out = hybusd()
        .arg("--socket")
        .arg(dir.join("s.sock"))
        .arg("--config")
        .arg(&cfg)
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ring_capacity 1000 must be a power of two"), "{err}");
    let missing = hybusd().arg("--config").arg(dir.join("nope.toml")).output().unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config"));
    let _ = std::fs::remove_dir_all(&dir);
}
