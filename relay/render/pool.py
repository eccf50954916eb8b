"""Rendering templates in processes of their own, so that no template can hold up the relay.

relay/render/sandbox.py stops a template at its next check, but some work never reaches one:
a single C-level operation (summing lists, sorting, compiling a huge template) can run for
minutes, and on the event loop it would hold back every delivery. So templated requests are
rendered by child processes (relay/render/child.py); a child that has not answered
``MAX_SECONDS + KILL_MARGIN`` after starting a request is killed and replaced, and that request
fails with "stopped after 1 s". A child's address space is capped (``MAX_MEMORY``), and its
CPU time per request, so that even one whose relay has died stops.

A webhook renders in one child at a time: its requests queue there, in order. A webhook without
a child takes an idle one; one idle child is kept ready (started in the background), up to
``PROCESSES``. So a webhook whose template is slow delays its own requests, and no other
webhook's unless ``PROCESSES`` webhooks are slow at once. Requests without templates (a plain
URL, the default body) never leave the event loop: they cost a JSON dump, not a round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from relay.model import Batch, Change, Request, Webhook
from relay.render.child import FRAME, KILL_MARGIN, Reply, check_job, request_job
from relay.render.request import Renderer, RenderError, needs_jinja
from relay.render.sandbox import MAX_SECONDS

PROCESSES = 4
"""Render processes at most, each about 30 MB; started as webhooks with templates need them."""
START_SECONDS = 30.0
"""Time a render process has to start (import relay and Jinja2) before its jobs fail."""
END_SECONDS = 3.0
"""How long shutting a render process down may wait for it to be gone."""


@dataclass(eq=False)
class _Job:
    frame: bytes
    key: int
    future: asyncio.Future[Reply]
    moved: bool = False
    """Handed on once already: the process it was first given to died before answering."""

    def fail(self, reason: str) -> None:
        if not self.future.done():
            self.future.set_result(("error", reason))


class _Child:
    """One render process, the jobs it was given, and the task that reads its answers, in
    order, each within its deadline (counted from the previous answer, or from the job's
    arrival when the process was idle)."""

    def __init__(self, argv: Sequence[str], pool: RenderPool) -> None:
        self.jobs: deque[_Job] = deque()
        self.keys: set[int] = set()
        self._argv = argv
        self._pool = pool
        self._process: asyncio.subprocess.Process | None = None
        self._ready = False
        """Started and given the jobs that came meanwhile, and not ending: new jobs are written
        as they come."""
        self._unsent: list[bytes] = []
        self._late = False
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._serve())

    def add(self, job: _Job) -> None:
        self.jobs.append(job)
        if self._ready:
            self._send(job.frame)
        self._wake.set()

    def _send(self, frame: bytes) -> None:
        """Jobs that come in one turn of the event loop go in one write; nothing waits for the
        process to read them (the pipe holds no more than the requests in flight)."""
        self._unsent.append(frame)
        if len(self._unsent) == 1:
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        assert self._process is not None and self._process.stdin is not None
        if self._ready:  # else it is ending: its jobs go to another child
            with contextlib.suppress(ConnectionError):
                self._process.stdin.write(b"".join(self._unsent))
        self._unsent.clear()

    async def _serve(self) -> None:
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            exited = asyncio.create_task(self._process.wait())
            await asyncio.wait_for(self._read(), START_SECONDS)  # ("ready",)
            for job in self.jobs:
                self._send(job.frame)
            self._ready = True
            while self.jobs or await self._woken(exited):
                if self.jobs and not await self._answer(self.jobs[0]):
                    return
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as exc:
            # The process did not start, or died: maybe of its first job, maybe of something
            # else (killed while idle, say). That job goes to another process once; if that
            # one dies too, the job fails with the reason.
            if self.jobs and self.jobs[0].moved:
                self.jobs.popleft().fail(await self._why(exc))
            elif self.jobs:
                self.jobs[0].moved = True
        finally:
            await self._end()
            self._pool.ended(self)

    async def _woken(self, exited: asyncio.Task[int]) -> bool:
        """Wait for a job; False if the process ended first (killed while idle, say): what came
        meanwhile goes to another child."""
        self._wake.clear()
        woken = asyncio.create_task(self._wake.wait())
        await asyncio.wait({woken, exited}, return_when=asyncio.FIRST_COMPLETED)
        woken.cancel()
        return not exited.done()

    async def _answer(self, job: _Job) -> bool:
        """Wait for the answer to ``job``, killing the process at the deadline. False when the
        process is to be ended."""
        watchdog = asyncio.get_running_loop().call_later(MAX_SECONDS + KILL_MARGIN, self._overdue)
        try:
            reply = await self._read()
        except (EOFError, asyncio.IncompleteReadError):
            if not self._late:
                raise
            self.jobs.popleft().fail(f"stopped after {MAX_SECONDS:g} s (the limit per request)")
            return False
        finally:
            watchdog.cancel()
        self.jobs.popleft()
        if not job.future.done():
            job.future.set_result(reply)
        if not self.jobs:
            self.keys.clear()
        return not self._late  # answered just as it was killed: the next job goes elsewhere

    def _overdue(self) -> None:
        assert self._process is not None
        self._late = True
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    async def _read(self) -> Reply:
        assert self._process is not None and self._process.stdout is not None
        header = await self._process.stdout.readexactly(FRAME.size)
        payload = await self._process.stdout.readexactly(FRAME.unpack(header)[0])
        reply: Reply = marshal.loads(payload)
        return reply

    async def _why(self, exc: BaseException) -> str:
        if self._process is None:
            return f"could not start a render process: {exc}"
        with contextlib.suppress(TimeoutError):
            status = await asyncio.wait_for(self._process.wait(), 1.0)
            if status < 0:
                return f"the render process was ended by signal {signal.Signals(-status).name}"
            return f"the render process exited with status {status}"
        return f"the render process stopped answering ({type(exc).__name__})"

    async def _end(self) -> None:
        self._ready = False
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        # A killed process is reaped at once, but a machine under load may take its time: the
        # relay's shutdown must not wait on it for long (the exit reaps it anyway).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), END_SECONDS)
        if self._process.stdin is not None:
            self._process.stdin.close()


class RenderPool:
    """Renders requests as :class:`Renderer` does, templated ones in render processes. Use it
    from one event loop; ``close()`` ends the processes."""

    def __init__(self, env_allow: Sequence[str] = (), processes: int = PROCESSES) -> None:
        self._local = Renderer(env_allow)
        self._argv = [sys.executable, "-P", "-m", "relay.render.child", json.dumps(list(env_allow))]
        self._processes = processes
        self._children: list[_Child] = []

    async def request(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: Mapping[str, Any] | None = None,
        *,
        timestamp: int,
        delivery_id: str,
    ) -> Request:
        """As :meth:`Renderer.request`."""
        if not needs_jinja(webhook):
            return self._local.request(
                webhook, change, action_data, timestamp=timestamp, delivery_id=delivery_id
            )
        job = request_job(webhook, change, action_data, timestamp, delivery_id)
        _, method, url, headers, body, delivery = await self._run(job, webhook.id)
        return Request(method, url, headers, body, delivery)

    async def check(self, source: str, what: str) -> None:
        """As :meth:`Renderer.check`."""
        if "{" in source:
            await self._run(check_job(source, what), 0)

    async def close(self) -> None:
        """End the render processes; requests still waiting are cancelled."""
        children, self._children = self._children, []
        for child in children:
            child.task.cancel()
        await asyncio.gather(*(child.task for child in children), return_exceptions=True)
        for child in children:
            for job in child.jobs:
                job.future.cancel()

    async def _run(self, job: bytes, key: int) -> Reply:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._child_for(key).add(_Job(job, key, future))
        reply = await future
        if reply[0] == "error":
            raise RenderError(reply[1])
        return reply

    def _child_for(self, key: int) -> _Child:
        """The child already rendering for ``key``, else an idle one, else a new one, else the
        least busy; then make sure an idle one is ready for the next key."""
        chosen = next((child for child in self._children if key in child.keys), None)
        if chosen is None:
            chosen = next((child for child in self._children if not child.keys), None)
        if chosen is None and len(self._children) < self._processes:
            chosen = self._start()
        if chosen is None:
            chosen = min(self._children, key=lambda child: len(child.jobs))
        chosen.keys.add(key)
        if len(self._children) < self._processes and all(child.keys for child in self._children):
            self._start()
        return chosen

    def _start(self) -> _Child:
        child = _Child(self._argv, self)
        self._children.append(child)
        return child

    def ended(self, child: _Child) -> None:
        """A child ended (killed at its deadline, or died): its other jobs go to another."""
        if child not in self._children:
            return  # closing
        self._children.remove(child)
        for job in child.jobs:
            if not job.future.done():
                self._child_for(job.key).add(job)


class BlockingRenderPool:
    """A :class:`RenderPool` for code without an event loop (``relay preview``, ``relay rules
    check``), so that they apply exactly the limits ``relay run`` does."""

    def __init__(self, env_allow: Sequence[str] = ()) -> None:
        self._runner = asyncio.Runner()
        self._pool = RenderPool(env_allow, processes=1)

    def __enter__(self) -> BlockingRenderPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._runner.run(self._pool.close())
        self._runner.close()

    def request(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: Mapping[str, Any] | None = None,
        *,
        timestamp: int,
        delivery_id: str,
    ) -> Request:
        """As :meth:`RenderPool.request`, waiting for the answer."""
        return self._runner.run(
            self._pool.request(
                webhook, change, action_data, timestamp=timestamp, delivery_id=delivery_id
            )
        )

    def check(self, source: str, what: str) -> None:
        """As :meth:`RenderPool.check`, waiting for the answer."""
        self._runner.run(self._pool.check(source, what))
