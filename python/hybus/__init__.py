"""hybus: the Python client of the hybus message bus.

Services and callers of one Linux host talk through the daemon ``hybusd``;
payloads travel in shared memory and are read in place (zero-copy)::

    import hybus
    with hybus.Bus() as bus:
        route = bus.resolve("demo.upper")
        with bus.call(route, b"hello") as answer:
            print(bytes(answer))          # b'HELLO'

``Bus`` connects; ``Sample`` is a received payload (buffer protocol,
read-only, over the shared chunk); ``Loan`` a chunk of our pool written
in place; ``Service`` and ``Request`` the serving side; ``Publisher`` and
``Subscription`` topics. Every error is a subclass of ``hybus.Error``.
"""

from ._hybus import (  # noqa: F401
    AccessDenied,
    ActivationFailed,
    BadPayload,
    BadRequest,
    Bus,
    BusGone,
    Cancelled,
    CorruptPool,
    DeadlineExceeded,
    Error,
    Loan,
    NameOwned,
    NoDaemon,
    NoInstance,
    NoSuchService,
    NotFound,
    OutOfPool,
    PayloadTooLarge,
    PeerGone,
    PendingCall,
    ProtocolError,
    Publisher,
    QueueFull,
    QuotaExceeded,
    Request,
    Route,
    Sample,
    Service,
    ServiceError,
    Subscription,
    SystemCallError,
    VersionMismatch,
    WouldBlock,
)

__all__ = [
    "AccessDenied", "ActivationFailed", "BadPayload", "BadRequest", "Bus", "BusGone", "Cancelled",
    "CorruptPool", "DeadlineExceeded", "Error", "Loan", "NameOwned", "NoDaemon", "NoInstance",
    "NoSuchService", "NotFound", "OutOfPool", "PayloadTooLarge", "PeerGone",
    "PendingCall", "ProtocolError", "Publisher", "QueueFull", "QuotaExceeded",
    "Request", "Route", "Sample", "Service", "ServiceError", "Subscription",
    "SystemCallError", "VersionMismatch", "WouldBlock",
]
