"""Fault injection: latency, error answers, connection resets, and creates that hang, fail or
answer late. Tests configure faults from any thread; the server takes them one call at a time."""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from tests.support.daytona.routes import check_route
from tests.support.daytona.state import ApiError


@dataclass(eq=False)
class Fault:
    kind: Literal["status", "reset"]
    remaining: int
    status: int = 0
    retry_after: float | None = None
    message: str | None = None
    code: str | None = None

    def error(self) -> ApiError:
        message = self.message or f"injected {self.status}"
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        return ApiError(self.status, message, code=self.code, headers=headers)


@dataclass(eq=False)
class CreatePlan:
    kind: Literal["hang", "error", "slow"]
    remaining: int
    reason: str = ""
    delay: float = 0.0


def abort_connection(request: web.Request) -> web.StreamResponse:
    """Reset the client's connection (RST, no answer)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never reaches the client: the socket is gone


class FaultInjection:
    """The faults a test asked for (thread-safe); the emulator's public fault methods."""

    def __init__(self) -> None:
        self._fault_lock = threading.RLock()
        self._faults: dict[str, list[Fault]] = {}
        self._latency: dict[str | None, float] = {}
        self._create_plans: list[CreatePlan] = []
        self._start_delay = 0.0

    def set_latency(self, seconds: float, route: str | None = None) -> None:
        """Delay every answer (or those of `route`) by `seconds`; 0 removes the delay."""
        check_route(route)
        with self._fault_lock:
            self._latency[route] = seconds

    def fail_next(
        self,
        route: str,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        message: str | None = None,
        code: str | None = None,
    ) -> None:
        """The next `times` calls of `route` answer `status` (429 carries `Retry-After`)."""
        check_route(route)
        fault = Fault("status", times, status, retry_after, message, code)
        with self._fault_lock:
            self._faults.setdefault(route, []).append(fault)

    def reset_next(self, route: str, times: int = 1) -> None:
        """The next `times` calls of `route` get their connection reset without an answer."""
        check_route(route)
        with self._fault_lock:
            self._faults.setdefault(route, []).append(Fault("reset", times))

    def hang_next_create(self, times: int = 1) -> None:
        """The next creates are recorded and stay `starting` forever."""
        with self._fault_lock:
            self._create_plans.append(CreatePlan("hang", times))

    def fail_next_create(self, reason: str = "runner failed", times: int = 1) -> None:
        """The next creates answer `starting`, then the sandbox is in `error` with `reason`."""
        with self._fault_lock:
            self._create_plans.append(CreatePlan("error", times, reason=reason))

    def slow_next_create(self, delay: float, times: int = 1) -> None:
        """The next creates are recorded at once (started) but answered only after `delay`."""
        with self._fault_lock:
            self._create_plans.append(CreatePlan("slow", times, delay=delay))

    def set_start_delay(self, seconds: float) -> None:
        """New sandboxes stay `starting` this long (default 0: created `started`)."""
        with self._fault_lock:
            self._start_delay = seconds

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()
            self._latency.clear()
            self._create_plans.clear()
            self._start_delay = 0.0

    # --- taken by the server, one call at a time ---------------------------------------------

    def take_fault(self, route: str) -> tuple[float, Fault | None]:
        """The delay for a call of `route`, and the fault it gets (one use of it), if any."""
        with self._fault_lock:
            delay = self._latency.get(route, 0.0) + self._latency.get(None, 0.0)
            queue = self._faults.get(route)
            while queue:
                fault = queue[0]
                if fault.remaining <= 0:
                    queue.pop(0)
                    continue
                fault.remaining -= 1
                return delay, fault
            return delay, None

    def take_create_plan(self) -> CreatePlan | None:
        """What the next create does (one use of the oldest plan left), if a test planned it."""
        with self._fault_lock:
            while self._create_plans:
                head = self._create_plans[0]
                if head.remaining <= 0:
                    self._create_plans.pop(0)
                    continue
                head.remaining -= 1
                return head
            return None

    @property
    def start_delay(self) -> float:
        with self._fault_lock:
            return self._start_delay
