"""Fixtures: a real hybusd (the built binary) on a private socket, and the
other built programs (hybusctl, hybus-peer) the tests run beside it.

The binaries come from $HYBUS_BIN_DIR, else the workspace's target/release
(`cargo build --release --workspace --all-targets` builds them).
"""

import os
import pathlib
import subprocess
import time

import pytest

import hybus

REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("HYBUS_BIN_DIR", REPO / "target" / "release"))

# Bounds every wait of these tests: a hang becomes a failure.
SOON = 20.0


def binary(name):
    p = BIN / name
    if not p.exists():
        pytest.fail(f"{p} is not built: run `cargo build --release --workspace --all-targets` first")
    return str(p)


def eventually(f, timeout=SOON, every=0.02):
    """f() until it is truthy (its value), or None after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = f()
        if v:
            return v
        time.sleep(every)
    return None


class Daemon:
    def __init__(self, tmp):
        self.socket = str(tmp / "bus.sock")
        self.log = tmp / "hybusd.log"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "WATCHDOG_USEC")}
        self.proc = subprocess.Popen(
            [binary("hybusd"), "--socket", self.socket],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"), env=env,
        )

        def up():
            try:
                hybus.Bus(self.socket).close()
                return True
            except hybus.Error:
                return False

        if not eventually(up):
            self.stop()
            pytest.fail("hybusd did not come up:\n" + self.log.read_text())

    def bus(self):
        return hybus.Bus(self.socket)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=SOON)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    d.stop()


class Peer:
    """A hybus-peer process (a Rust client): exits when its stdin closes."""

    def __init__(self, socket, *args):
        self.proc = subprocess.Popen(
            [binary("hybus-peer"), socket, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"hybus-peer {args}: {line!r}"

    def stop(self):
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=SOON)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def peer(daemon):
    made = []

    def start(*args):
        p = Peer(daemon.socket, *args)
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop()
