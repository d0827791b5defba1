"""One poll-until loop for every wait on something another process does.

The core waits on the health agent (drain), on BIRD (routes) and on a node's daemons
(verify); the lab waits on route reflectors, Icinga2 and faults. Each asks the same:
read a value every ``interval`` seconds until it is good or ``timeout`` has passed,
and say how long that took.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Polled(Generic[T]):
    """The last value read, whether it was good, and the seconds waited."""

    value: T
    done: bool
    waited: float

    @property
    def waited_ms(self) -> int:
        """:attr:`waited` in whole milliseconds."""
        return round(self.waited * 1000)


def poll_until(read: Callable[[], T], good: Callable[[T], object] = bool, timeout: float = 30.0,
               interval: float = 0.05, since: float | None = None) -> Polled[T]:
    """Call ``read`` until ``good(value)`` or ``timeout`` seconds have passed (it is read at least
    once, and once more at the deadline); ``waited`` counts from the monotonic time ``since``
    when given (the moment the awaited event was caused), else from the first read."""
    t0 = time.monotonic()
    while True:
        value = read()
        now = time.monotonic()
        if good(value):
            return Polled(value, True, now - (t0 if since is None else since))
        if now - t0 > timeout:
            return Polled(value, False, now - (t0 if since is None else since))
        time.sleep(interval)
