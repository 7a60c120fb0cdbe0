#!/usr/bin/env python3
"""Round trips of the Python and C clients beside their own baselines, in one run.

    python python/bench.py [--n 20000] [--rounds 3]

Starts the built hybusd (target/release, or $HYBUS_BIN_DIR) on a private
socket, with an echo service (`hybusctl worker echo`), all polling with
sched_yield between looks ("spin"; the direct rows spin without yielding,
"busy", as `hybusctl bench`'s rpc rows), and prints p50 / p99 of 8-byte
round trips:

* py/uds-pingpong      two Python processes, a Unix socketpair (the baseline);
* py/brokered-rpc      Python `bus.call` through the daemon;
* py/direct-rpc        the same over a direct channel;
* c/brokered-rpc       `capi/examples/call.c` (built with cc) through the daemon;
* rust/brokered-rpc    `capi/examples/call_rust.rs`, the same loop in Rust.

Each row is the median over --rounds rounds (C and Rust alternate).
"""

import argparse
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# This folder holds the package's sources (hybus/ without its native part):
# import the installed package, not them.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]

import hybus  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(os.environ.get("HYBUS_BIN_DIR", REPO / "target" / "release"))
PAYLOAD = b"pingpong"


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))]


def pinned(cpu):
    """A preexec_fn pinning a child to ``cpu`` (None: nothing)."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def uds_pingpong(n, server_cpu):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        if server_cpu is not None:
            os.sched_setaffinity(0, {server_cpu})
        a.close()
        try:
            while True:
                m = b.recv(64)
                if not m:
                    break
                b.sendall(m)
        finally:
            os._exit(0)
    b.close()
    rtt = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t = clock()
        a.sendall(PAYLOAD)
        got = a.recv(64)
        rtt.append(clock() - t)
        assert got == PAYLOAD
    a.close()
    os.waitpid(pid, 0)
    return rtt


def bus_rpc(sock, n, direct):
    # Brokered: every party yields between looks (the daemon too); direct:
    # both ends spin on the channel (as `hybusctl bench`'s rpc rows).
    with hybus.Bus(sock, idle="busy" if direct else "spin") as bus:
        route = bus.resolve("bench.echo.busy" if direct else "bench.echo")
        if direct:
            bus.request_direct(route)
            end = time.monotonic() + 10
            while not bus.is_direct(route):
                bus.call(route, PAYLOAD).release()
                if time.monotonic() > end:
                    raise SystemExit("the direct channel did not open")
        for _ in range(1000):  # warm up
            bus.call(route, PAYLOAD).release()
        rtt = []
        clock = time.perf_counter_ns
        call = bus.call
        for _ in range(n):
            t = clock()
            s = call(route, PAYLOAD)
            rtt.append(clock() - t)
            s.release()
        assert bytes(bus.call(route, PAYLOAD)) == PAYLOAD
        return rtt


def run_prog(cmd, cpu):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=pinned(cpu))
    if out.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {out.stderr}")
    fields = dict(f.split("=") for f in out.stdout.split())
    return int(fields["p50_ns"]), int(fields["p99_ns"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="round trips per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-pin", action="store_true",
                    help="leave the two parties to the scheduler (default: caller on CPU 0, server on CPU 1)")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpu = (None, None) if args.no_pin or len(cpus) < 2 else (cpus[0], cpus[1])
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="hybus-pybench-"))
    sock = str(tmp / "bus.sock")
    (tmp / "hybusd.toml").write_text("[idle]\nspins = 0\nyields = 2000\n")
    # The daemon is left to the scheduler (on the two CPUs: a third party of the brokered path).
    daemon = subprocess.Popen([str(BIN / "hybusd"), "--socket", sock, "--config", str(tmp / "hybusd.toml")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(tmp / "log", "wb"),
                              preexec_fn=(lambda: os.sched_setaffinity(0, set(cpus))))
    procs = [daemon]
    try:
        for _ in range(500):
            try:
                hybus.Bus(sock).close()
                break
            except hybus.Error:
                time.sleep(0.02)
        echo = subprocess.Popen([str(BIN / "hybusctl"), "--socket", sock, "worker", "echo", "bench.echo", "--idle", "spin"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(server_cpu))
        procs.append(echo)
        assert echo.stdout.readline().startswith("ready")

        call_c = tmp / "call"
        cc = subprocess.run(["cc", "-O2", str(REPO / "capi/examples/call.c"), "-I", str(REPO / "capi/include"),
                             "-L", str(BIN), f"-Wl,-rpath,{BIN}", "-lhybus_c", "-o", str(call_c)],
                            capture_output=True, text=True)
        if cc.returncode != 0:
            raise SystemExit("cc call.c: " + cc.stderr)
        call_rust = BIN / "examples" / "call_rust"
        if not call_rust.exists():
            raise SystemExit(f"{call_rust} is not built: cargo build --release -p hybus-c --examples")

        rows = {k: [] for k in ("py/uds-pingpong", "py/brokered-rpc", "py/direct-rpc", "c/brokered-rpc", "rust/brokered-rpc")}
        for _ in range(args.rounds):
            r = uds_pingpong(args.n, server_cpu)
            rows["py/uds-pingpong"].append((percentile(r, 0.5), percentile(r, 0.99)))
            r = bus_rpc(sock, args.n, direct=False)
            rows["py/brokered-rpc"].append((percentile(r, 0.5), percentile(r, 0.99)))
            rows["c/brokered-rpc"].append(run_prog([str(call_c), "bench.echo", "x", str(args.n), sock, "spin"], client_cpu))
            rows["rust/brokered-rpc"].append(run_prog([str(call_rust), "bench.echo", "x", str(args.n), sock, "spin"], client_cpu))
        # Direct last, with a server that spins (it burns its CPU while it
        # waits, so it runs only now) in place of the yielding one.
        echo.terminate()
        echo.wait()
        busy = subprocess.Popen([str(BIN / "hybusctl"), "--socket", sock, "worker", "echo", "bench.echo.busy", "--idle", "busy"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=pinned(server_cpu))
        procs.append(busy)
        assert busy.stdout.readline().startswith("ready")
        for _ in range(args.rounds):
            r = bus_rpc(sock, args.n, direct=True)
            rows["py/direct-rpc"].append((percentile(r, 0.5), percentile(r, 0.99)))

        med = {k: (statistics.median(p for p, _ in v), statistics.median(q for _, q in v)) for k, v in rows.items()}
        uds = med["py/uds-pingpong"][0]
        rust = med["rust/brokered-rpc"][0]
        print(f"{'RESULT':<20} {'PAYLOAD':>7} {'P50':>10} {'P99':>10}  {'×PY-UDS(P50)':>12}  {'×RUST(P50)':>10}")
        for k, (p50, p99) in med.items():
            vs_uds = f"{p50 / uds:.2f}" if k.startswith("py/") and k != "py/uds-pingpong" else "-"
            vs_rust = f"{p50 / rust:.2f}" if k == "c/brokered-rpc" else "-"
            print(f"{k:<20} {'8 B':>7} {p50 / 1000:>8.1f}µs {p99 / 1000:>8.1f}µs  {vs_uds:>12}  {vs_rust:>10}")
        pin = "unpinned" if client_cpu is None else f"caller on CPU {client_cpu}, server on CPU {server_cpu}"
        print(f"(median of {args.rounds} rounds of {args.n} round trips; {pin}; python {sys.version.split()[0]})")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
