"""asyncio waits on the connection's doorbell: never a blocked loop.

A wait tries without blocking, then arms the rings (``Bus._arm``) and
awaits readability of the doorbell eventfd (and the control socket) in the
running loop (``loop.add_reader``), then disarms (``Bus._disarm``) and tries
again. One ``_Waker`` per bus and loop holds the readers, so that many
concurrent waits share the fds (``add_reader`` keeps one callback per fd).
"""

import asyncio
import weakref

from ._hybus import DeadlineExceeded

# While the daemon is gone nothing rings: look again this often (a try reconnects).
_RETRY = 0.2

_wakers = weakref.WeakKeyDictionary()


class _Waker:
    """The readers of one bus in one loop, and the futures waiting on them."""

    def __init__(self, bus, loop):
        self.bus = bus
        self.loop = loop
        self.waiters = set()
        self.fds = None
        self.control = False

    def wait(self):
        fut = self.loop.create_future()
        self.waiters.add(fut)
        fds = self.bus._wake_fds()
        gone = self.bus._gone()
        want = (fds[0], None if gone else fds[1])
        if self.fds != want:
            self._unregister()
            self.loop.add_reader(want[0], self._fire, False)
            if want[1] is not None:
                self.loop.add_reader(want[1], self._fire, True)
            self.fds = want
        return fut, gone

    def _fire(self, control):
        # Level-triggered readers: unregister until someone waits again,
        # or a readable fd nobody reads would spin the loop.
        self._unregister()
        waiters, self.waiters = self.waiters, set()
        for f in waiters:
            if not f.done():
                f.set_result(control)

    def _unregister(self):
        if self.fds is not None:
            self.loop.remove_reader(self.fds[0])
            if self.fds[1] is not None:
                self.loop.remove_reader(self.fds[1])
            self.fds = None

    def forget(self, fut):
        self.waiters.discard(fut)
        if not self.waiters:
            self._unregister()


def _waker(bus, loop):
    per_loop = _wakers.get(bus)
    if per_loop is None:
        per_loop = weakref.WeakKeyDictionary()
        _wakers[bus] = per_loop
    w = per_loop.get(loop)
    if w is None:
        w = _Waker(bus, loop)
        per_loop[loop] = w
    return w


async def wait_until(bus, attempt, deadline=None):
    """``attempt()`` until it returns something other than None, awaiting
    the doorbell between tries; DeadlineExceeded past ``deadline`` (loop time)."""
    loop = asyncio.get_running_loop()
    waker = _waker(bus, loop)
    while True:
        r = attempt()
        if r is not None:
            return r
        if deadline is not None and loop.time() >= deadline:
            raise DeadlineExceeded("deadline exceeded")
        if not bus._arm():
            continue
        fut, gone = waker.wait()
        delay = None if deadline is None else max(0.0, deadline - loop.time())
        if gone:
            delay = _RETRY if delay is None else min(delay, _RETRY)
        timer = None
        if delay is not None:
            timer = loop.call_later(delay, lambda: fut.done() or fut.set_result(False))
        control = False
        try:
            control = await fut
        finally:
            if timer is not None:
                timer.cancel()
            waker.forget(fut)
            bus._disarm(bool(control))


async def wait_call(bus, pending, timeout):
    """The answer of ``pending`` (a PendingCall), awaited for at most
    ``timeout`` seconds (None: no limit); cancelled if the awaiting task is
    (or on Ctrl-C)."""
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    try:
        return await wait_until(bus, pending.try_answer, deadline)
    except BaseException:
        pending.cancel()
        raise


async def next_publication(sub):
    """The next publication of ``sub``, awaited (for ``async for``)."""
    return await wait_until(sub._bus, sub.try_next)
