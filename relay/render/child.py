"""A render process: renders the requests relay/render/pool.py sends it, within hard limits.

Run as ``python -m relay.render.child ENV_ALLOW_JSON``. Jobs come on standard input, answers go on
standard output, each a length-prefixed frame: jobs pickled (from the relay), answers in
``marshal``, which can only make plain data, so nothing a render process says can run code in
the relay. Kept apart from the pool (no asyncio here), so that a process starts quickly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import marshal
import math
import pickle
import resource
import signal
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from relay.model import Batch, Change, Webhook
from relay.render.request import Renderer, RenderError
from relay.render.sandbox import MAX_SECONDS

KILL_MARGIN = 0.5
"""Seconds past MAX_SECONDS after which a render process that has not answered is killed."""
MAX_MEMORY = 256 * 1024 * 1024
"""Address space of a render process (about 35 MB at rest); past it, allocations fail. A
template's values are each held under 8 million characters (up to 32 MB); this bounds how many
it keeps, and the size of a row a templated webhook can render (tens of MB)."""
FRAME = struct.Struct("!I")

Reply = tuple[Any, ...]


def _frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload)) + payload


_CHANGE_FIELDS = tuple(field.name for field in dataclasses.fields(Change))
"""A change travels as its fields: a plain tuple pickles several times faster."""


@functools.lru_cache(maxsize=256)
def _pickled(webhook: Webhook) -> bytes:
    """A webhook as jobs carry it: pickled once, not for every change it is rendered for."""
    return pickle.dumps(webhook)


def _fields(change: Change) -> tuple[Any, ...]:
    return tuple(getattr(change, name) for name in _CHANGE_FIELDS)


def request_job(
    webhook: Webhook,
    change: Change | Batch,
    action_data: Mapping[str, Any] | None,
    timestamp: int,
    delivery_id: str,
) -> bytes:
    """The frame asking a render process for ``webhook``'s request for ``change`` or a batch (the
    webhook pickled once per webhook, each change as a plain tuple)."""
    if isinstance(change, Batch):
        changes = [_fields(c) for c in change.changes]
        datas = [dict(data or {}) for data in change.action_data]
        job: tuple[Any, ...] = (
            "batch",
            _pickled(webhook),
            change.id,
            changes,
            datas,
            timestamp,
            delivery_id,
        )
    else:
        fields = _fields(change)
        data = dict(action_data or {})
        job = ("request", _pickled(webhook), fields, data, timestamp, delivery_id)
    return _frame(pickle.dumps(job))


def check_job(source: str, what: str) -> bytes:
    """The frame asking a render process to compile ``source`` without rendering it; errors name it
    ``what``."""
    return _frame(pickle.dumps(("check", source, what)))


class _Handler:
    """What a render process does with a job (webhooks unpickled once each)."""

    def __init__(self, env_allow: Sequence[str]) -> None:
        self._renderer = Renderer(env_allow)
        self._webhooks: dict[bytes, Webhook] = {}

    def __call__(self, job: tuple[Any, ...]) -> Reply:
        kind, *args = job
        try:
            if kind == "request":
                return self._request(*args)
            if kind == "batch":
                return self._batch(*args)
            self._renderer.check(*args)
            return ("ok",)
        except RenderError as exc:
            return ("error", str(exc))
        except Exception as exc:  # outside the templates (signing, say): still one line
            return ("error", f"{type(exc).__name__}: {exc}")

    def _webhook(self, pickled: bytes) -> Webhook:
        webhook = self._webhooks.get(pickled)
        if webhook is None:
            if len(self._webhooks) > 256:
                self._webhooks.clear()
            webhook = self._webhooks[pickled] = pickle.loads(pickled)
        return webhook

    def _batch(
        self,
        pickled: bytes,
        batch_id: int,
        changes: list[tuple[Any, ...]],
        datas: list[dict[str, Any]],
        timestamp: int,
        delivery_id: str,
    ) -> Reply:
        batch = Batch(batch_id, tuple(Change(*fields) for fields in changes), tuple(datas))
        return self._reply(self._webhook(pickled), batch, None, timestamp, delivery_id)

    def _request(
        self,
        pickled: bytes,
        fields: tuple[Any, ...],
        action_data: dict[str, Any],
        timestamp: int,
        delivery_id: str,
    ) -> Reply:
        change = Change(*fields)
        return self._reply(self._webhook(pickled), change, action_data, timestamp, delivery_id)

    def _reply(
        self,
        webhook: Webhook,
        change: Change | Batch,
        action_data: dict[str, Any] | None,
        timestamp: int,
        delivery_id: str,
    ) -> Reply:
        request = self._renderer.request(
            webhook, change, action_data, timestamp=timestamp, delivery_id=delivery_id
        )
        return (
            "ok",
            request.method,
            request.url,
            request.headers,
            request.body,
            request.delivery_id,
        )


def _read_exactly(stream: BinaryIO, count: int) -> bytes | None:
    data = stream.read(count)
    return data if len(data) == count else None


def serve() -> None:
    """A render process: answer jobs from standard input on standard output until it closes.
    Signals meant for the relay (Ctrl-C, systemd's stop) are left to the relay, which ends
    its children when it is done with them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _limit(resource.RLIMIT_AS, MAX_MEMORY)
    _limit(resource.RLIMIT_CORE, 0)  # a child ended by SIGXCPU leaves no core file
    jobs, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write on the answers' channel
    handle = _Handler(json.loads(sys.argv[1]))
    _reply(answers, ("ready",))
    while (header := _read_exactly(jobs, FRAME.size)) is not None:
        _limit_cpu()
        try:
            payload = _read_exactly(jobs, FRAME.unpack(header)[0])
            if payload is None:
                return
            reply = handle(pickle.loads(payload))
        except MemoryError:  # reading the job: what is left of it cannot be told from the next
            megabytes = MAX_MEMORY // 2**20
            _reply(answers, ("error", f"the change is too large to render within {megabytes} MB"))
            return
        _reply(answers, reply)


def _reply(answers: BinaryIO, reply: Reply) -> None:
    answers.write(_frame(marshal.dumps(reply)))
    answers.flush()


def _limit_cpu() -> None:
    """Allow this request a few seconds of CPU: the relay kills a child long before, but a child
    whose relay died must stop by itself (SIGXCPU)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = math.ceil(usage.ru_utime + usage.ru_stime)
    _limit(resource.RLIMIT_CPU, spent + math.ceil(MAX_SECONDS + KILL_MARGIN) + 1)


def _limit(kind: int, value: int) -> None:
    _, hard = resource.getrlimit(kind)
    resource.setrlimit(kind, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


if __name__ == "__main__":
    serve()
