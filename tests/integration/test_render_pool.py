"""Render processes: templated requests rendered where a stuck template can be stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from relay.model import Webhook
from relay.render.child import KILL_MARGIN, MAX_MEMORY
from relay.render.pool import RenderPool
from relay.render.request import Renderer, RenderError
from relay.render.sandbox import MAX_OUTPUT, MAX_SECONDS
from support.render import CHANGE, HOOK, STUCK

DELIVERY = "5d3c1e2a-7b4f-4e0a-9c1d-2f6b8a9e0c11"
"""The delivery id the requests here go under (relay.deliveries.id in a running relay)."""


def hook(number: int, template: str) -> Webhook:
    return replace(HOOK, id=number, name=f"hook{number}", body_template=template)


def render_processes() -> list[int]:
    """Our render processes, as ps would show them."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"relay.render.child" in command:
            found.append(int(entry.name))
    return found


def memory(pid: int, field: str) -> int:
    """VmRSS (memory held now) or VmHWM (the most held since the mark was reset), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def test_requests_render_as_in_process_and_only_templates_start_a_process() -> None:
    plain = replace(HOOK, id=1)
    templated = hook(2, '{"id": {{ data.id }}, "who": {{ username|tojson }}}')
    templated = replace(templated, additional_headers="X-Id: {{ data.id }}", secret="s")

    async def scenario() -> None:
        pool = RenderPool()
        try:
            await pool.request(plain, CHANGE, timestamp=7, delivery_id=DELIVERY)
            assert render_processes() == []  # the default body is a JSON dump, no round trip
            for webhook in (plain, templated):
                got = await pool.request(
                    webhook, CHANGE, {"team": "ops"}, timestamp=7, delivery_id=DELIVERY
                )
                assert got == Renderer().request(
                    webhook, CHANGE, {"team": "ops"}, timestamp=7, delivery_id=DELIVERY
                )
            assert render_processes() != []
            with pytest.raises(RenderError, match="body_template: ZeroDivisionError"):
                await pool.request(
                    hook(3, "{{ 1 / 0 }}"), CHANGE, timestamp=7, delivery_id=DELIVERY
                )
        finally:
            await pool.close()
        assert render_processes() == []

    asyncio.run(scenario())


def test_requests_sent_while_a_process_starts_each_get_their_own_answer() -> None:
    async def scenario() -> list[bytes]:
        pool = RenderPool()
        try:
            first = asyncio.create_task(
                pool.request(hook(1, "{{ 0 }}"), CHANGE, timestamp=0, delivery_id=DELIVERY)
            )
            await asyncio.sleep(0.05)  # the process exists, and is still importing
            later = [
                pool.request(hook(1, f"{{{{ {n} }}}}"), CHANGE, timestamp=0, delivery_id=DELIVERY)
                for n in (1, 2, 3)
            ]
            return [request.body for request in await asyncio.gather(first, *later)]
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == [b"0", b"1", b"2", b"3"]


@pytest.mark.timing
def test_a_template_stuck_in_c_code_is_stopped_at_the_deadline_and_others_go_on() -> None:
    healthy = hook(1, '{"id": {{ data.id }}}')
    hostile = hook(2, STUCK)
    waits: list[float] = []

    async def keep_rendering(pool: RenderPool, until: asyncio.Task[None]) -> None:
        while not until.done():
            started = time.monotonic()
            await pool.request(healthy, CHANGE, timestamp=0, delivery_id=DELIVERY)
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.05)

    async def scenario() -> float:
        pool = RenderPool()
        try:
            # Two processes started and ready, as in a relay that has been running.
            await asyncio.gather(
                *(
                    pool.request(hook(n, "{{ 1 }}"), CHANGE, timestamp=0, delivery_id=DELIVERY)
                    for n in (1, 2)
                )
            )

            async def stuck() -> None:
                with pytest.raises(
                    RenderError, match=r"^stopped after 1 s \(the limit per request\)"
                ):
                    await pool.request(hostile, CHANGE, timestamp=0, delivery_id=DELIVERY)

            started = time.monotonic()
            task = asyncio.create_task(stuck())
            await asyncio.gather(task, keep_rendering(pool, task))
            took = time.monotonic() - started
            # The process was replaced: the same webhook renders again at once.
            again = await pool.request(
                replace(hostile, body_template="{{ 1 }}"), CHANGE, timestamp=0, delivery_id=DELIVERY
            )
            assert again.body == b"1"
            return took
        finally:
            await pool.close()

    took = asyncio.run(scenario())
    assert MAX_SECONDS <= took < MAX_SECONDS + KILL_MARGIN + 0.5
    assert len(waits) >= 10
    assert max(waits) < KILL_MARGIN  # the healthy webhook never waited on the stuck one


def test_a_request_whose_process_dies_is_tried_once_more_in_a_new_one() -> None:
    """A process can die of something else than its request (killed while idle, say): the
    request goes to a new process. Only when that one dies too does the request fail."""
    slow = hook(
        1, "{% for i in range(100000) %}{% if data.status ~ i == 'x' %}{% endif %}{% endfor %}done"
    )

    async def killed(pool: RenderPool, times: int) -> bytes:
        rendering = asyncio.create_task(
            pool.request(slow, CHANGE, timestamp=0, delivery_id=DELIVERY)
        )
        gone: set[int] = set()
        for _ in range(times):
            while not set(render_processes()) - gone:  # the one given the request
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            (pid,) = set(render_processes()) - gone
            os.kill(pid, signal.SIGKILL)
            gone.add(pid)
        return (await rendering).body

    async def scenario() -> None:
        pool = RenderPool(processes=1)
        try:
            assert await killed(pool, 1) == b"done"
            with pytest.raises(RenderError, match="render process was ended by signal SIGKILL"):
                await killed(pool, 2)
            assert (
                await pool.request(hook(1, "{{ 2 }}"), CHANGE, timestamp=0, delivery_id=DELIVERY)
            ).body == b"2"
        finally:
            await pool.close()

    asyncio.run(scenario())


HOSTILE = [
    "{% set a = 'ab' %}" + "{% set a = a ~ a %}" * 28,
    "{{ ''|center(300000000) }}",
    "{{ ('x' * 2000000)|replace('x', 'y' * 100) }}",
    "{{ '%0300000000d' % 1 }}",
    "{{ range(10**9)|list|length }}",
    "{% set big = 'x' * 8000000 %}{{ [big, big, big]|tojson }}",
    "{% set x %}{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}{% endset %}",
]


def test_render_processes_stay_small_whatever_the_template() -> None:
    """Peak memory of the render process (VmHWM, reset before each template) while it renders
    hostile templates: each stops before it holds much more than one value at the limit. Many
    values each under the limit run into the process's own ceiling, never the relay's."""
    many = "{% set a = '\\U0001F389' * 8000000 %}" + "".join(  # 32 MB each
        f"{{% set a{n} = a ~ '{n}' %}}" for n in range(MAX_MEMORY // (4 * MAX_OUTPUT) + 4)
    )

    async def scenario() -> dict[str, int]:
        pool = RenderPool(processes=1)
        grew = {}
        try:
            await pool.request(hook(1, "{{ data.id }}"), CHANGE, timestamp=0, delivery_id=DELIVERY)
            (pid,) = render_processes()
            for template in HOSTILE:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM
                before = memory(pid, "VmRSS")
                with pytest.raises(RenderError, match=r"goes past|iterations|stopped after"):
                    await pool.request(hook(1, template), CHANGE, timestamp=0, delivery_id=DELIVERY)
                grew[template] = memory(pid, "VmHWM") - before
            with pytest.raises(RenderError, match="MemoryError"):
                await pool.request(hook(1, many), CHANGE, timestamp=0, delivery_id=DELIVERY)
            assert render_processes() == [pid]  # the same process, still at work
            assert (
                await pool.request(hook(1, "{{ 3 }}"), CHANGE, timestamp=0, delivery_id=DELIVERY)
            ).body == b"3"
            return grew
        finally:
            await pool.close()

    grew = asyncio.run(scenario())
    for template, growth in grew.items():
        print(f"+{growth / 2**20:5.1f} MB  {template[:70]}")
    assert max(grew.values()) < 4 * MAX_OUTPUT
