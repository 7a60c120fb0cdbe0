"""asyncio: awaited calls and `async for` on the connection's doorbell."""

import asyncio
import time

import pytest

import hybus
from conftest import SOON


def test_call_async_and_gather(daemon, peer):
    peer("serve", "demo.rev")

    async def main():
        with daemon.bus() as bus:
            route = bus.resolve("demo.rev")
            a = await bus.call_async(route, b"async", timeout=SOON)
            assert bytes(a) == b"cnysa"
            many = await asyncio.gather(*[bus.call_async(route, b"n%03d" % i, timeout=SOON) for i in range(50)])
            assert [bytes(m) for m in many] == [(b"n%03d" % i)[::-1] for i in range(50)]

    asyncio.run(asyncio.wait_for(main(), SOON))


def test_the_loop_is_never_blocked(daemon, peer):
    """While a call waits on a service that holds it, the loop keeps ticking."""
    peer("serve", "demo.hold", "hold")

    async def main():
        with daemon.bus() as bus:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            t = asyncio.ensure_future(ticker())
            start = time.monotonic()
            with pytest.raises(hybus.DeadlineExceeded):
                await bus.call_async("demo.hold", b"x", timeout=0.5)
            assert time.monotonic() - start >= 0.5
            t.cancel()
            # 0.5 s of 10 ms ticks: a blocked loop would have none.
            assert ticks >= 10, ticks

    asyncio.run(asyncio.wait_for(main(), SOON))


def test_cancelling_the_task_cancels_the_call(daemon, peer):
    peer("serve", "demo.hold", "hold")

    async def main():
        with daemon.bus() as bus:
            task = asyncio.ensure_future(bus.call_async("demo.hold", b"y", timeout=60))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(200):
                if bus.status()["exchanges"] == 0:
                    return
                await asyncio.sleep(0.02)
            raise AssertionError(f"the call is still in flight: {bus.status()}")

    asyncio.run(asyncio.wait_for(main(), SOON))


def test_async_for_over_a_subscription(daemon):
    async def main():
        with daemon.bus() as sub_bus, daemon.bus() as pub_bus:
            sub = sub_bus.subscribe("t.async")

            async def publish():
                await asyncio.sleep(0.05)
                for i in range(5):
                    pub_bus.publish("t.async", b"frame-%d" % i + b"." * 100)
                    await asyncio.sleep(0.01)

            p = asyncio.ensure_future(publish())
            got = []
            async for s in sub:
                got.append(bytes(s)[:7])
                s.release()
                if len(got) == 5:
                    break
            await p
            assert got == [b"frame-%d" % i for i in range(5)]

    asyncio.run(asyncio.wait_for(main(), SOON))
