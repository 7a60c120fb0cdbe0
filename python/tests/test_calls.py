"""Python and the other languages on one bus: real daemon, separate processes."""

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy
import pytest

import hybus
from conftest import SOON, binary, eventually


def test_python_caller_to_rust_service(daemon, peer):
    peer("serve", "demo.rev")
    with daemon.bus() as bus:
        route = bus.resolve("demo.rev")
        with bus.call(route, b"hello", timeout=SOON) as a:
            assert bytes(a) == b"olleh"
            assert not a.zero_copy
        # Any buffer-protocol object: bytearray, memoryview, numpy, str.
        assert bytes(bus.call(route, bytearray(b"abc"), timeout=SOON)) == b"cba"
        assert bytes(bus.call(route, memoryview(b"xyz")[1:], timeout=SOON)) == b"zy"
        assert bytes(bus.call("demo.rev", "text", timeout=SOON)) == b"txet"
        big = numpy.arange(100_000, dtype=numpy.uint32)
        with bus.call(route, big, timeout=SOON) as a:
            assert a.zero_copy and len(a) == big.nbytes
            back = numpy.frombuffer(a, dtype=numpy.uint8)
            assert (back == numpy.frombuffer(big.tobytes(), dtype=numpy.uint8)[::-1]).all()
            del back
        # A loan written in place.
        loan = bus.loan(5000, timeout=SOON)
        with memoryview(loan) as m:
            m[:] = b"ab" * 2500
        with bus.call(route, loan, timeout=SOON) as a:
            assert bytes(a) == b"ba" * 2500
        # Pending calls.
        p = bus.begin_call(route, b"later", timeout=SOON)
        s = p.wait()
        assert bytes(s) == b"retal"
        s.release()
        assert eventually(lambda: bus.chunks_in_use() == 0 and bus.status()["chunks_lent"] == 0)


def test_errors_are_classes_under_hybus_error(daemon, peer):
    with daemon.bus() as bus:
        with pytest.raises(hybus.NotFound):
            bus.resolve("demo.nothing")
        peer("serve", "demo.hold", "hold")
        with pytest.raises(hybus.DeadlineExceeded) as e:
            bus.call("demo.hold", b"x", timeout=0.1)
        assert isinstance(e.value, hybus.Error)
    with pytest.raises(hybus.NoDaemon):
        hybus.Bus("/nonexistent/hybus.sock")
    closed = hybus.Bus(daemon.socket)
    closed.close()
    with pytest.raises(hybus.BusGone):
        closed.resolve("demo.hold")


def test_python_service_called_by_hybusctl(daemon):
    with daemon.bus() as bus, bus.register("py.upper") as svc:
        def serve():
            for _ in range(2):
                req = svc.next(timeout=SOON)
                assert req is not None
                with req.payload as p:
                    req.reply(bytes(p).upper())

        t = threading.Thread(target=serve)
        t.start()
        ctl = binary("hybusctl")
        for text in ("hello from hybusctl", "again"):
            out = subprocess.run(
                [ctl, "--socket", daemon.socket, "call", "py.upper", text],
                capture_output=True, text=True, timeout=SOON,
            )
            assert out.returncode == 0, out.stderr
            assert out.stdout.strip() == text.upper()
        t.join(timeout=SOON)
        assert not t.is_alive()


def test_a_python_service_sees_the_caller_s_deadline(daemon):
    with daemon.bus() as server, server.register("py.deadline") as svc, daemon.bus() as client:
        seen = []

        def serve():
            req = svc.next(timeout=SOON)
            seen.append(req.deadline)
            req.reply(b"ok")

        t = threading.Thread(target=serve)
        t.start()
        assert bytes(client.call("py.deadline", b"?", timeout=3.0)) == b"ok"
        t.join(timeout=SOON)
        # What the caller had left of its 3 s, as the service sees it.
        assert seen and seen[0] is not None and 1.5 < seen[0] <= 3.05, seen


def test_python_service_answers_in_a_loan(daemon):
    with daemon.bus() as server, server.register("py.big") as svc, daemon.bus() as client:
        def serve():
            req = svc.next(timeout=SOON)
            n = len(req.payload)
            loan = server.loan(n, timeout=SOON)
            with memoryview(loan) as m, memoryview(req.payload) as src:
                m[:] = src
            req.reply(loan)

        t = threading.Thread(target=serve)
        t.start()
        data = os.urandom(200_000)
        with client.call("py.big", data, timeout=SOON) as a:
            assert a.zero_copy and bytes(a) == data
        t.join(timeout=SOON)
        assert eventually(lambda: server.chunks_in_use() == 0 and client.chunks_in_use() == 0)


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]


def buffer_address(obj):
    """Where the buffer ``obj`` exports starts, asked through the C buffer API."""
    b = _PyBuffer()
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    assert get(obj, ctypes.byref(b), 0) == 0
    try:
        return b.buf
    finally:
        release = ctypes.pythonapi.PyBuffer_Release
        release.argtypes = [ctypes.POINTER(_PyBuffer)]
        release(ctypes.byref(b))


def test_pubsub_one_mib_read_in_place(daemon):
    """A 1 MiB publication is read where the publisher wrote it: the
    memoryview's address is the sample's, inside the publisher's mapped pool."""
    with daemon.bus() as pub_bus, daemon.bus() as sub_bus:
        sub = sub_bus.subscribe("camera.frames")
        loan = pub_bus.loan(1 << 20, timeout=SOON)
        with memoryview(loan) as m:
            m[:] = bytes(range(256)) * 4096
        pub_bus.publish("camera.frames", loan)
        s = sub.next(timeout=SOON)
        assert s is not None and len(s) == 1 << 20 and s.zero_copy
        with memoryview(s) as view:
            assert view.readonly
            # The view's own address, through ctypes and through numpy's no-copy frombuffer.
            assert buffer_address(view) == s.address
            assert buffer_address(view[4096:]) == s.address + 4096
            arr = numpy.frombuffer(view, dtype=numpy.uint8)
            assert arr.ctypes.data == s.address
            assert not arr.flags.writeable and not arr.flags.owndata
            assert arr[255] == 255 and arr[256] == 0 and int(arr.sum()) == 4096 * sum(range(256))
            del arr
        # The address lies in a shared mapping of the pool (a memfd), not the heap.
        maps = open(f"/proc/{os.getpid()}/maps").read().splitlines()
        region = next(
            (l for l in maps if int(l.split()[0].split("-")[0], 16) <= s.address < int(l.split()[0].split("-")[1], 16)),
            None,
        )
        assert region is not None, "the sample's address is in no mapping"
        start, end = (int(x, 16) for x in region.split()[0].split("-"))
        assert s.address + len(s) <= end
        assert "memfd:" in region or "/memfd" in region, region
        assert "r--s" in region.split()[1] or region.split()[1].startswith("r-"), region
        heap = ctypes.addressof(ctypes.create_string_buffer(16))
        assert not (start <= heap < end), "the heap and the pool overlap?"
        with pytest.raises(BufferError):
            with memoryview(s):
                s.release()
        s.release()
        assert eventually(lambda: pub_bus.chunks_in_use() == 0 and pub_bus.status()["chunks_lent"] == 0)
        sub.close()


def test_iterating_a_subscription(daemon):
    with daemon.bus() as bus:
        sub = bus.subscribe("t.iter")
        for i in range(3):
            bus.publish("t.iter", b"m%d" % i)
        got = []
        for s in sub:
            got.append(bytes(s))
            s.release()
            if len(got) == 3:
                break
        assert got == [b"m0", b"m1", b"m2"]
        assert sub.next(timeout=0.05) is None


def test_direct_channel(daemon, peer):
    peer("serve", "demo.rev")
    with daemon.bus() as bus:
        route = bus.resolve("demo.rev")
        bus.request_direct(route)
        assert eventually(lambda: bytes(bus.call(route, b"ab", timeout=SOON)) == b"ba" and bus.is_direct(route))
        assert bytes(bus.call(route, b"direct", timeout=SOON)) == b"tcerid"


KILLED_CLIENT = textwrap.dedent("""
    import sys, hybus
    bus = hybus.Bus(sys.argv[1])
    route = bus.resolve("demo.hold")
    # Three chunks of ours in flight: a call held by the service, and two
    # received publications we keep.
    sub = bus.subscribe("t.kill")
    pending = bus.begin_call(route, b"x" * 100_000, timeout=60)
    print("sent", flush=True)
    keep = [sub.next(timeout=20) for _ in range(2)]
    print("holding", len([k for k in keep if k is not None]), flush=True)
    pending.wait(60)
""")


def test_kill_9_mid_call_leaves_no_chunk_held(daemon, peer):
    peer("serve", "demo.hold", "hold")
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, daemon.socket], stdout=subprocess.PIPE, text=True,
    )
    try:
        assert child.stdout.readline().strip() == "sent"
        with daemon.bus() as bus:
            for _ in range(2):
                bus.publish("t.kill", b"p" * 50_000)
            assert child.stdout.readline().strip() == "holding 2"
            assert eventually(lambda: bus.status()["chunks_lent"] >= 2), bus.status()
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=SOON)

            def clean():
                s = bus.status()
                return s["chunks_lent"] == 0 and s["exchanges"] == 0 and bus.chunks_in_use() == 0

            assert eventually(clean), bus.status()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


INTERRUPTED = textwrap.dedent("""
    import sys, hybus
    bus = hybus.Bus(sys.argv[1])
    print("calling", flush=True)
    try:
        bus.call("demo.hold", b"x", timeout=60)
    except KeyboardInterrupt:
        print("interrupted", bus.chunks_in_use(), flush=True)
""")


def test_ctrl_c_interrupts_a_call(daemon, peer):
    peer("serve", "demo.hold", "hold")
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED, daemon.socket], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "calling"
        time.sleep(0.3)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=SOON)
        assert out.strip() == "interrupted 0"
        with daemon.bus() as bus:
            assert eventually(lambda: bus.status()["exchanges"] == 0), bus.status()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_collected_sample_gives_its_chunk_back(daemon):
    with daemon.bus() as pub_bus, daemon.bus() as sub_bus:
        sub = sub_bus.subscribe("t.gc")
        pub_bus.publish("t.gc", b"g" * 100_000)
        s = sub.next(timeout=SOON)
        assert s is not None and s.zero_copy
        assert pub_bus.chunks_in_use() == 1
        view = memoryview(s)
        del s  # the view still holds it
        assert pub_bus.chunks_in_use() == 1
        view.release()  # the last reference: collected now
        assert eventually(lambda: pub_bus.chunks_in_use() == 0 and pub_bus.status()["chunks_lent"] == 0)
