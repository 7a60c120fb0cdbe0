"""Type stubs of hybus._hybus, the native part of the hybus package."""

import os
from typing import Any, Awaitable, Dict, Iterator, AsyncIterator, Optional, Tuple, Union


Data = Union[bytes, bytearray, memoryview, str, "Loan", Any]
"""What can be sent: any object with the buffer protocol (bytes,
bytearray, memoryview, numpy arrays, mmap, ...), a str (as UTF-8), or a Loan."""

RouteLike = Union["Route", str]
"""A Route, or a service name (resolved on the spot)."""

class Error(Exception):
    """Every failure of hybus (the base of the classes below)."""

class NoDaemon(Error):
    """Nothing listens at the socket path (is hybusd running?)."""

class VersionMismatch(Error):
    """Client and daemon speak different protocol versions."""

class NameOwned(Error):
    """The name is owned by another user."""

class AccessDenied(Error):
    """Policy forbids it."""

class NotFound(Error):
    """No service, topic or instance of that name or id."""

class QuotaExceeded(Error):
    """A per-user quota is exhausted."""

class BadRequest(Error):
    """The daemon refused a malformed request (or a handle is closed or spent)."""

class NoSuchService(Error):
    """No service has this route."""

class NoInstance(Error):
    """The service has no serving instance right now."""

class DeadlineExceeded(Error):
    """The deadline passed before an answer came."""

class PeerGone(Error):
    """The serving instance died or left with the request in flight."""

class PayloadTooLarge(Error):
    """The payload is larger than the largest chunk of the pool."""

class OutOfPool(Error):
    """Every chunk large enough is in use."""

class QueueFull(Error):
    """The receiver's queue is full."""

class Cancelled(Error):
    """The exchange was cancelled (by the caller, or the server refused it)."""

class ServiceError(Error):
    """The service answered with an error of its own."""

class WouldBlock(Error):
    """The ring is full and the caller asked not to block."""

class BusGone(Error):
    """The connection to the daemon is lost (or the bus was closed)."""

class ProtocolError(Error):
    """The daemon or a peer broke the protocol."""

class BadPayload(Error):
    """A payload is not the typed value asked for."""

class SystemCallError(Error):
    """A system call failed."""

class CorruptPool(Error):
    """A received payload's pool no longer validates (that payload alone failed)."""

class ActivationFailed(Error):
    """The service was started on demand and failed before it registered."""

class Route:
    """A resolved service name. Resolve once, call many times."""

    @property
    def name(self) -> str:
        """The service name."""
    @property
    def id(self) -> int:
        """The route id (as of the last resolve)."""

class Sample:
    """A received payload, read in place in the sender's shared chunk.

    ``memoryview(sample)`` and ``numpy.frombuffer(sample)`` read it without
    a copy (read-only). The chunk goes back on ``release()``, on leaving a
    ``with`` block, or when the sample is collected.
    """

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __buffer__(self, flags: int) -> memoryview: ...
    def tobytes(self) -> bytes:
        """A copy of the bytes."""
    @property
    def zero_copy(self) -> bool:
        """Whether it is read in place in a shared chunk (payloads over 40 bytes)."""
    @property
    def address(self) -> int:
        """The address of its first byte (in the shared mapping when zero_copy)."""
    def release(self) -> None:
        """Gives the chunk back now (BufferError while a memoryview is alive)."""
    def __enter__(self) -> "Sample": ...
    def __exit__(self, *exc: Any) -> bool: ...

class Loan:
    """A chunk of this connection's pool, written in place through
    ``memoryview(loan)`` (writable), then sent as the data of a call, fire,
    publish or reply."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int) -> memoryview: ...
    def truncate(self, n: int) -> None:
        """Shrinks the payload to ``n`` bytes."""
    def release(self) -> None:
        """Gives the chunk back unsent."""
    @property
    def address(self) -> int:
        """The address of its first byte in our shared pool."""

class PendingCall:
    """A call sent and not yet answered."""

    def wait(self, timeout: Optional[float] = None) -> Optional[Sample]:
        """The answer, or None if it has not come within ``timeout`` seconds."""
    def try_answer(self) -> Optional[Sample]:
        """The answer if it has come, else None; never waits."""
    def cancel(self) -> None:
        """Gives up on the call: the server is told."""

class Request:
    """What came to a service: a call (answer with reply or fail) or a fire."""

    @property
    def payload(self) -> Sample:
        """The payload, read in place."""
    @property
    def is_fire(self) -> bool:
        """Whether it is a fire (nothing to answer)."""
    @property
    def deadline(self) -> Optional[float]:
        """Seconds the caller still waits (0.0 once passed); None if it set no deadline, or for a fire."""
    @property
    def cancelled(self) -> bool:
        """Whether the caller cancelled (or timed out) meanwhile."""
    def reply(self, data: Data) -> None:
        """Answers with ``data``."""
    def fail(self, message: str) -> None:
        """Fails the call: its caller gets ServiceError."""

class Service:
    """A registered service instance; close() unregisters it."""

    @property
    def name(self) -> str:
        """The service name."""
    def next(self, timeout: Optional[float] = None) -> Optional[Request]:
        """The next request or fire, or None if none came within ``timeout`` seconds."""
    def close(self) -> None:
        """Unregisters the instance."""
    def __enter__(self) -> "Service": ...
    def __exit__(self, *exc: Any) -> bool: ...
    def __iter__(self) -> Iterator[Request]: ...
    def __next__(self) -> Request: ...

class Publisher:
    """Publishes on one topic."""

    @property
    def topic(self) -> str:
        """The topic."""
    def publish(self, data: Data) -> None:
        """Publishes ``data`` to every subscriber."""

class Subscription:
    """A topic's publications: ``for s in sub``, ``sub.next(timeout)``, ``async for s in sub``."""

    @property
    def topic(self) -> str:
        """The topic."""
    @property
    def dropped(self) -> int:
        """Publications dropped because this client read too slowly."""
    def next(self, timeout: Optional[float] = None) -> Optional[Sample]:
        """The next publication, or None if none came within ``timeout`` seconds."""
    def try_next(self) -> Optional[Sample]:
        """The next publication if one is there; never waits."""
    def close(self) -> None:
        """Unsubscribes."""
    def __enter__(self) -> "Subscription": ...
    def __exit__(self, *exc: Any) -> bool: ...
    def __iter__(self) -> Iterator[Sample]: ...
    def __next__(self) -> Sample: ...
    def __aiter__(self) -> AsyncIterator[Sample]: ...
    def __anext__(self) -> Awaitable[Sample]: ...

class Bus:
    """A connection to the daemon hybusd (a context manager)."""

    def __init__(self, socket: Optional[Union[str, "os.PathLike[str]"]] = None, idle: str = "default") -> None:
        """Connects to ``socket``, or $HYBUS_SOCKET, else
        $XDG_RUNTIME_DIR/hybus/bus.sock, else /run/hybus/bus.sock. ``idle``:
        "default", "spin", "busy" or "park" (how waits spend their time)."""
    def __enter__(self) -> "Bus": ...
    def __exit__(self, *exc: Any) -> bool: ...
    def close(self) -> None:
        """Closes this handle."""
    @property
    def socket(self) -> str:
        """The socket path."""
    @property
    def client_id(self) -> int:
        """The daemon's id of this connection."""
    def resolve(self, name: str) -> Route:
        """Resolves a service name."""
    def call(self, route: RouteLike, data: Data, timeout: Optional[float] = 1.0) -> Sample:
        """Calls ``route`` and waits for the answer (GIL released; Ctrl-C cancels)."""
    async def call_async(self, route: RouteLike, data: Data, timeout: Optional[float] = 1.0) -> Sample:
        """``call`` for asyncio, waiting on the doorbell in the running loop."""
    def begin_call(self, route: RouteLike, data: Data, timeout: Optional[float] = 1.0) -> PendingCall:
        """Sends a call and returns at once."""
    def fire(self, route: RouteLike, data: Data) -> None:
        """Sends without waiting for an answer."""
    def loan(self, size: int, timeout: Optional[float] = 1.0) -> Loan:
        """Lends a chunk of at least ``size`` bytes to write in place."""
    def register(self, name: str) -> Service:
        """Registers an instance of the service ``name``."""
    def publisher(self, topic: str) -> Publisher:
        """A publisher for ``topic``."""
    def publish(self, topic: str, data: Data) -> None:
        """Publishes ``data`` on ``topic``."""
    def subscribe(self, topic: str) -> Subscription:
        """Subscribes to ``topic``."""
    def request_direct(self, route: RouteLike) -> int:
        """Asks for a direct channel to the service: its id."""
    def is_direct(self, route: RouteLike) -> bool:
        """Whether calls to ``route`` go over a direct channel now."""
    def chunks_in_use(self) -> int:
        """Chunks of this connection's pool in use."""
    def status(self) -> Dict[str, Any]:
        """The daemon's state (clients, services, exchanges, chunks_lent, ...)."""
    def stats(self) -> Dict[str, Any]:
        """Traffic per service instance and direct channel."""
    def _wake_fds(self) -> Tuple[int, int]: ...
    def _arm(self) -> bool: ...
    def _disarm(self, control: bool) -> None: ...
    def _gone(self) -> bool: ...
