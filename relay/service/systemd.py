"""The systemd notify protocol, spoken directly (a datagram to ``$NOTIFY_SOCKET``): READY=1
once the relay is connected and listening, WATCHDOG=1 while its event loop turns, STOPPING=1
on shutdown. Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable


def notify(message: str) -> bool:
    """Send one notification; False when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def watchdog_seconds() -> float | None:
    """How often to ping: half of ``WatchdogSec``, or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


READINESS_CHECK_SECONDS = 0.2
"""How often readiness is looked at until READY=1 is sent: ``systemctl start`` returns that
much after the relay connects, at most."""


async def supervise(
    ready: Callable[[], bool],
    stop: asyncio.Event,
    alive: Callable[[], bool] = lambda: True,
    status: str = "connected, delivering",
) -> None:
    """Tell systemd when the relay is ready, keep its watchdog fed while ``alive()``, and say
    when it stops. The watchdog pings come from this task, so they stop if the event loop
    hangs; a relay waiting for its database keeps pinging (it is alive, and reconnects on its
    own). Pings go out at the watchdog interval whether or not the relay is ready yet: looking
    at readiness often is cheap, a datagram to PID 1 five times a second is not."""
    interval = watchdog_seconds()
    loop = asyncio.get_running_loop()
    next_ping = loop.time()
    announced = False
    while not stop.is_set():
        if not announced and ready():
            announced = True
            notify(f"READY=1\nSTATUS={status}")
        now = loop.time()
        if interval and now >= next_ping:
            if alive():
                notify("WATCHDOG=1")
                next_ping = now + interval
            else:  # no ping while a process is down: look again shortly
                next_ping = now + READINESS_CHECK_SECONDS
        timeouts = [] if announced else [READINESS_CHECK_SECONDS]
        if interval:
            timeouts.append(max(next_ping - loop.time(), 0.0))
        with contextlib.suppress(TimeoutError):  # no timeout at all: nothing to do until stop
            await asyncio.wait_for(stop.wait(), min(timeouts) if timeouts else None)
    notify("STOPPING=1")
