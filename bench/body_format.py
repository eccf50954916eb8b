"""What a default body costs in each body format: the relay's own and NetBox 4's, side by side.

    .venv/bin/python bench/body_format.py [--rounds 7] [--number 20000]

`default_body` for one update (two images) of a NetBox-like device row (about 1 KB of JSON, as
PostgreSQL writes it), in the relay format and the netbox4 format, interleaved, --rounds rounds
of --number calls each; then the same for a 1 MB row (fewer calls). Prints the median (and
best) microseconds per body of each format and the ratio netbox4 / relay. Both formats splice
the row's JSON text in without parsing it (orjson Fragment), so the row's size weighs the same
in both and the shape around it is all that differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit
from datetime import UTC, datetime

from relay.model import Change
from relay.render.request import default_body

ROW = {
    "id": 7,
    "name": "sw-ams-01",
    "serial": "FOC1234X0AB",
    "asset_tag": None,
    "status": "active",
    "site_id": 3,
    "rack_id": 12,
    "position": "42.0",
    "face": "front",
    "tenant_id": None,
    "platform_id": 2,
    "role_id": 4,
    "device_type_id": 9,
    "primary_ip4_id": 101,
    "comments": "core switch, " * 40,
    "custom_field_data": {"owner": "netops", "warranty": "2028-01-31"},
    "created": "2026-11-22T10:00:00.123456+00:00",
    "last_updated": "2026-11-22T10:00:00.123456+00:00",
}


def change(row: dict[str, object]) -> Change:
    old, new = json.dumps(row), json.dumps({**row, "status": "offline"})
    return Change(
        id=41,
        schema_name="public",
        table_name="dcim_device",
        op="update",
        old_json=old,
        new_json=new,
        pk_json='{"id": 7}',
        username="alice",
        request_id="5d3c1e2a-7b4f-4e0a-9c1d-2f6b8a9e0c11",
        txid="812",
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
        model="dcim.device",
        request_path="/api/dcim/devices/7/",
        request_method="PATCH",
    )


def measure(subject: Change, rounds: int, number: int) -> dict[str, list[float]]:
    """Microseconds per body of each format in each round, the formats alternating."""
    times: dict[str, list[float]] = {"relay": [], "netbox4": []}
    for _ in range(rounds):
        for body_format, spent in times.items():
            seconds = timeit.timeit(
                lambda f=body_format: default_body(subject, None, f),  # type: ignore[misc]
                number=number,
            )
            spent.append(seconds / number * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    small = change(ROW)
    big = change({**ROW, "comments": "x" * 1_000_000})
    for label, subject, number in [
        (f"device row, {len(small.new_json or '')} bytes", small, args.number),
        (f"device row, {len(big.new_json or '') / 1e6:.1f} MB", big, max(args.number // 200, 20)),
    ]:
        times = measure(subject, args.rounds, number)
        medians = {f: statistics.median(spent) for f, spent in times.items()}
        best = {f: min(spent) for f, spent in times.items()}
        sizes = {f: len(default_body(subject, None, f)) for f in times}
        print(
            f"{label}: median (best) us per body: relay {medians['relay']:.2f} "
            f"({best['relay']:.2f}), {sizes['relay']} bytes; netbox4 {medians['netbox4']:.2f} "
            f"({best['netbox4']:.2f}), {sizes['netbox4']} bytes; ratio netbox4/relay "
            f"{medians['netbox4'] / medians['relay']:.2f} ({best['netbox4'] / best['relay']:.2f})"
        )


if __name__ == "__main__":
    main()
