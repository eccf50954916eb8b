"""Rendering: the request a receiver gets, built in Jinja2's sandbox."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook as StandardWebhook

from relay.model import BODY_FORMATS, Batch, Change, Request, Webhook, dumps, loads
from relay.render.request import Renderer, RenderError, batch_context, context, default_body
from relay.render.sandbox import MAX_OUTPUT
from support.render import CHANGE, HOOK

NETBOX4_KEYS = ["event", "timestamp", "object_type", "data", "request", "snapshots"]
"""NetBox 4's default body, key by key in its order."""
DELIVERY = "5d3c1e2a-7b4f-4e0a-9c1d-2f6b8a9e0c11"
"""The delivery id the requests here go under (relay.deliveries.id in a running relay)."""


def request(**changes: Any) -> Request:
    fields = {**HOOK.__dict__, **changes}
    return Renderer().request(
        Webhook(**fields), CHANGE, {"team": "ops"}, timestamp=1_700_000_000, delivery_id=DELIVERY
    )


def test_context_has_netbox_names_and_ours() -> None:
    ctx = context(CHANGE, {"team": "ops", "event": "ignored"})
    assert ctx["event"] == "updated" and ctx["model"] == "orders"
    assert ctx["object_type"] == "public.orders" and ctx["timestamp"] == "2026-11-22T10:00:00+00:00"
    assert ctx["data"]["status"] == "paid" and ctx["snapshots"]["prechange"]["status"] == "new"
    assert (ctx["username"], ctx["request_id"], ctx["id"], ctx["pk"], ctx["txid"]) == (
        "alice",
        "req-1",
        41,
        {"id": 7},
        "812",
    )
    assert ctx["team"] == "ops" and ctx["action_data"] == {"team": "ops", "event": "ignored"}
    deleted = context(replace(CHANGE, op="delete", new_json=None))
    assert deleted["event"] == "deleted" and deleted["data"]["status"] == "new"


def test_default_body_is_the_context_as_json_with_exact_numbers_and_netbox_signature() -> None:
    req = request()
    assert req.method == "POST" and req.url == "https://example.test/hook"
    body = json.loads(req.body)
    assert body["event"] == "updated" and body["data"]["status"] == "paid"
    assert b'"total": 120.00' in req.body
    expected = hmac.new(b"s3cret", req.body, hashlib.sha512).hexdigest()
    assert req.headers["X-Hook-Signature"] == expected
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("relay/")
    assert req.headers["X-Relay-Event"] == "public.orders.updated"
    assert req.headers["X-Relay-Delivery"] == req.delivery_id == DELIVERY


def test_a_model_name_is_the_event_headers_object_type_as_docs_rules_says() -> None:
    """docs/rules.md: X-Relay-Event is object_type.event, so a table tracked with a NetBox
    model name (public.dcim_device as dcim.device) announces dcim.device.created."""
    device = replace(
        CHANGE, table_name="dcim_device", op="insert", old_json=None, model="dcim.device"
    )
    req = Renderer().request(HOOK, device, {}, timestamp=1_700_000_000, delivery_id=DELIVERY)
    assert req.headers["X-Relay-Event"] == "dcim.device.created"
    body = json.loads(req.body)
    assert (body["object_type"], body["model"], body["event"]) == (
        "dcim.device",
        "device",
        "created",
    )


RELAY_BODY = (
    b'{"team":"ops","event":"updated","timestamp":"2026-11-22T10:00:00+00:00","model":"orders",'
    b'"object_type":"public.orders","username":"alice","request_id":"req-1",'
    b'"data":{"id": 7, "status": "paid", "total": 120.00, "note": "a\\r\\nX-Evil: 1"},'
    b'"snapshots":{"prechange":{"id": 7, "status": "new", "total": 120.00, "note": '
    b'"a\\r\\nX-Evil: 1"},"postchange":{"id": 7, "status": "paid", "total": 120.00, "note": '
    b'"a\\r\\nX-Evil: 1"}},"id":41,"pk":{"id": 7},"txid":"812","action_data":{"team":"ops"}}'
)
"""The relay format's body of CHANGE with the action data {"team": "ops"}, as relay sent it
before body formats came (commit a7df833): the relay format stays it to the byte."""
TAGGED = replace(
    CHANGE, model="dcim.device", request_path="/api/dcim/devices/7/", request_method="PATCH"
)
"""A change made through NetBox's API (its path and method recorded with it)."""


def test_the_relay_format_is_the_body_relay_always_sent_to_the_byte() -> None:
    assert request().body == RELAY_BODY
    assert request(body_format="relay").body == RELAY_BODY
    # A request path and method recorded do not reach it: only templates and netbox4 see them.
    tagged = Renderer().request(
        HOOK,
        replace(CHANGE, request_path="/x", request_method="GET"),
        {"team": "ops"},
        timestamp=0,
        delivery_id=DELIVERY,
    )
    assert tagged.body == RELAY_BODY


def test_the_netbox4_format_is_netbox_4s_body_key_by_key() -> None:
    hook = replace(HOOK, body_format="netbox4")
    req = Renderer().request(
        hook, TAGGED, {"team": "ops", "request": "theirs"}, timestamp=0, delivery_id=DELIVERY
    )
    body = json.loads(req.body)
    assert list(body) == NETBOX4_KEYS
    assert (body["event"], body["object_type"], body["timestamp"]) == (
        "updated",
        "dcim.device",
        "2026-11-22T10:00:00+00:00",
    )
    assert body["request"] == {
        "id": "req-1",
        "path": "/api/dcim/devices/7/",
        "method": "PATCH",
        "user": "alice",
    }
    assert body["data"]["status"] == "paid" and body["snapshots"]["prechange"]["status"] == "new"
    assert b'"total": 120.00' in req.body  # the row spliced in as PostgreSQL wrote it
    # Signed and announced as any body: relay's own metadata is in the headers.
    expected = hmac.new(b"s3cret", req.body, hashlib.sha512).hexdigest()
    assert req.headers["X-Hook-Signature"] == expected
    assert req.headers["X-Relay-Delivery"] == DELIVERY
    assert req.headers["X-Relay-Event"] == "dcim.device.updated"


@pytest.mark.parametrize(
    ("op", "old", "new", "data"),
    [
        ("insert", None, '{"id": 7}', {"id": 7}),
        ("delete", '{"id": 7}', None, {"id": 7}),
        ("truncate", None, None, None),
    ],
)
def test_netbox4_bodies_of_every_event(
    op: str, old: str | None, new: str | None, data: dict[str, int] | None
) -> None:
    """A truncate has no row: data and both snapshots are null, the rest is there."""
    change = replace(TAGGED, op=op, old_json=old, new_json=new, pk_json=None, username=None)
    body = json.loads(default_body(change, body_format="netbox4"))
    assert list(body) == NETBOX4_KEYS and body["data"] == data
    assert body["event"] == {"insert": "created", "delete": "deleted"}.get(op, "truncated")
    assert body["snapshots"] == {
        "prechange": loads(old or "null"),
        "postchange": loads(new or "null"),
    }
    assert body["request"]["user"] is None and body["request"]["id"] == "req-1"


@pytest.mark.parametrize("value", ['/a"b\\c\n\r\t', "\u2028é𝄞\x7f", "/x" * 500_000, "%00/<script>"])
def test_any_request_path_method_or_user_is_json_in_the_netbox4_body(value: str) -> None:
    """What an application sets is written as JSON text, whatever it holds."""
    change = replace(TAGGED, request_path=value, request_method=value, username=value)
    body = json.loads(default_body(change, body_format="netbox4"))
    assert body["request"] == {"id": "req-1", "path": value, "method": value, "user": value}


def test_a_netbox4_batch_is_an_array_of_netbox4_bodies() -> None:
    changes = tuple(replace(TAGGED, id=41 + n, request_id=f"req-{n}") for n in range(3))
    batch = Batch(9, changes, ({"team": "ops"}, None, {}))
    req = Renderer().request(
        replace(HOOK, body_format="netbox4", batch_size=10),
        batch,
        timestamp=0,
        delivery_id=DELIVERY,
    )
    bodies = json.loads(req.body)
    assert [list(body) for body in bodies] == [NETBOX4_KEYS] * 3
    assert [body["request"]["id"] for body in bodies] == ["req-0", "req-1", "req-2"]
    assert req.body == b"[" + b",".join(default_body(c, None, "netbox4") for c in changes) + b"]"


def test_a_body_template_wins_over_the_format() -> None:
    templated = request(body_format="netbox4", body_template="{{ request.user }} {{ event }}")
    assert templated.body == b"alice updated"


def test_an_unknown_format_fails_the_delivery_in_words() -> None:
    """The database refuses one (relay.check_webhook); a Webhook made in code may still hold it."""
    with pytest.raises(RenderError, match="body_format 'NETBOX4' is not one of relay, netbox4"):
        request(body_format="NETBOX4")
    assert set(BODY_FORMATS) == {"relay", "netbox4"}
    for body_format in BODY_FORMATS:
        assert request(body_format=body_format).body.startswith(b"{")


def test_templates_see_netbox_4s_request() -> None:
    """NetBox 4 gives templates request.id, .path, .method and .user (a User that prints as its
    username): the same templates render the same here, in both formats."""
    template = (
        "{{ request.user }}|{{ request.user.username }}|{{ request.id }}|{{ request.path }}"
        "|{{ request.method }}|{{ request.user.email }}|{{ request | tojson }}"
    )
    for body_format in BODY_FORMATS:
        req = Renderer().request(
            replace(HOOK, body_template=template, body_format=body_format),
            TAGGED,
            timestamp=0,
            delivery_id=DELIVERY,
        )
        user, name, rid, path, method, email, whole = req.body.decode().split("|")
        assert (user, name, rid, path, method, email) == (
            "alice",
            "alice",
            "req-1",
            "/api/dcim/devices/7/",
            "PATCH",
            "",
        )
        assert json.loads(whole) == {
            "id": "req-1",
            "path": "/api/dcim/devices/7/",
            "method": "PATCH",
            "user": "alice",
        }
    # Nothing recorded: each is None (the user too: no name to print), as NetBox's request
    # would be absent.
    bare = context(replace(CHANGE, username=None, request_id=None))
    assert bare["request"] == {"id": None, "path": None, "method": None, "user": None}


def test_action_data_never_replaces_request() -> None:
    ctx = context(TAGGED, {"request": {"user": "mallory"}, "team": "ops"})
    assert ctx["request"]["user"] == "alice" and ctx["action_data"]["request"] == {
        "user": "mallory"
    }
    batch = batch_context(
        Batch(1, (TAGGED, replace(TAGGED, request_id="req-2")), ({"request": 1}, None))
    )
    assert batch["request"]["id"] == "req-1"
    assert [c["request"]["id"] for c in batch["changes"]] == ["req-1", "req-2"]


@pytest.mark.parametrize(
    ("template", "shown"),
    [
        ("{{ request.__class__ }}", ""),
        ("{{ request.user.__class__ }}", ""),
        ("{{ request.user|attr('__class__') }}", ""),
        ("{{ request.user.fget }}", ""),
        ("{{ '{0.__class__}'.format(request.user) }}", ""),
        ("{{ request.items() | list | length }}", "4"),  # reading is all it allows
    ],
)
def test_request_gives_nothing_but_its_values(template: str, shown: str) -> None:
    assert request(body_template=template).body.decode() == shown


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ request.pop('id') }}", "unsafe"),
        ("{{ request.update({'user': 'x'}) }}", "unsafe"),
        ("{{ request.user.__reduce_ex__(2) }}", "unsafe"),
        ("{{ request.user.username.__class__.__mro__ }}", "unsafe"),
        ("{{ request.user * 1000000000 }}", "characters"),
        ("{{ request.user.ljust(1000000000) }}", "ljust\\(\\) goes past"),
    ],
)
def test_request_is_guarded_as_any_value(template: str, reason: str) -> None:
    """request is a plain dict, request.user a str: the sandbox's rules and limits hold."""
    with pytest.raises(RenderError, match=reason):
        request(body_template=template)


def test_templates_for_url_body_and_headers() -> None:
    req = request(
        payload_url="https://example.test/{{ model }}/{{ data.id }}?team={{ team }}",
        body_template='{"text": "Order {{ data.id }} is {{ data.status }} ({{ username }})"}',
        additional_headers="X-Order: {{ data.id }}\nAuthorization: Bearer {{ team }}\n",
        http_method="PATCH",
    )
    assert req.url == "https://example.test/orders/7?team=ops"
    assert json.loads(req.body) == {"text": "Order 7 is paid (alice)"}
    assert req.headers["X-Order"] == "7" and req.headers["Authorization"] == "Bearer ops"
    assert req.method == "PATCH"


def test_tojson_keeps_exact_numbers() -> None:
    req = request(body_template='{"order": {{ data | tojson }}}')
    assert json.loads(req.body)["order"]["total"] == 120.0
    assert b"120.00" in req.body


def test_header_values_cannot_inject_headers() -> None:
    req = request(additional_headers="X-Note: {{ data.note }}")
    assert req.headers["X-Note"] == "aX-Evil: 1"
    assert "X-Evil" not in req.headers


def test_standard_webhooks_signature_verifies() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    fields = {**HOOK.__dict__, "signature": "standard", "secret": secret}
    req = Renderer().request(
        Webhook(**fields), CHANGE, timestamp=int(datetime.now().timestamp()), delivery_id=DELIVERY
    )
    assert req.headers["webhook-id"] == req.delivery_id
    assert StandardWebhook(secret).verify(req.body, req.headers)["data"]["status"] == "paid"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"body_template": "{{ data.id "}, "body_template: line 1: unexpected end of template"),
        ({"body_template": "{% for x in data %}"}, "body_template: line 1"),
        ({"body_template": "{{ 1 / 0 }}"}, "body_template: ZeroDivisionError"),
        (
            {"payload_url": "{{ data.status }}"},
            "payload_url rendered to 'paid', not an http",
        ),
        ({"additional_headers": "no colon here"}, "additional_headers line 1"),
        ({"additional_headers": "Bad Name: x"}, "is not 'Name: Value'"),
        (
            {"body_template": "{{ data.__class__.__mro__ }}"},
            "'dict' object is unsafe",
        ),
        ({"body_template": "{{ ''.__class__.__base__.__subclasses__() }}"}, "unsafe"),
        ({"body_template": "{{ 'HOME' | env }}"}, "'HOME' is not allowed"),
        ({"signature": "standard", "secret": "plain"}, "secret: a Standard Webhooks secret"),
    ],
)
def test_bad_templates_fail_with_a_clear_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        request(**fields)


def test_env_filter_reads_only_allowed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TOKEN_A", "tok")
    monkeypatch.setenv("SECRET_KEY", "nope")
    renderer = Renderer(env_allow=["RELAY_TOKEN_*"])
    hook = Webhook(
        **{**HOOK.__dict__, "additional_headers": "X-Token: {{ 'RELAY_TOKEN_A' | env }}"}
    )
    assert (
        renderer.request(hook, CHANGE, timestamp=0, delivery_id=DELIVERY).headers["X-Token"]
        == "tok"
    )
    bad = Webhook(**{**HOOK.__dict__, "body_template": "{{ 'SECRET_KEY' | env }}"})
    with pytest.raises(RenderError, match="not allowed"):
        renderer.request(bad, CHANGE, timestamp=0, delivery_id=DELIVERY)


def test_numbers_parse_exactly() -> None:
    assert loads('{"a": 1.10}') == {"a": Decimal("1.10")}


def test_docs_worked_examples_render_valid_json() -> None:
    """The Slack and compliance-report templates of docs/rules.md."""
    slack = Webhook(
        id=1,
        name="slack",
        payload_url="https://hooks.slack.com/services/T/B/X",
        body_template='{"text": {{ ("Order " ~ data.id ~ " paid: " ~ data.total ~ " EUR by " ~ '
        'data.customer ~ " (" ~ username ~ ")") | tojson }}}',
        signature="none",
    )
    order = replace(
        CHANGE,
        new_json='{"id": 7, "status": "paid", "total": 120.00, "customer": "ACME \\"Intl\\""}',
    )
    req = Renderer().request(slack, order, timestamp=0, delivery_id=DELIVERY)
    assert json.loads(req.body) == {"text": 'Order 7 paid: 120.00 EUR by ACME "Intl" (alice)'}
    assert "X-Hook-Signature" not in req.headers

    compliance = Webhook(
        id=2,
        name="compliance",
        payload_url="https://audit.example.com/hooks/compliance",
        secret="shared-secret",
        body_template="""
{
  "event": "{{ event }}",
  "report": {{ data.id }},
  "device_count": {{ data.devices }},
  "test_count": {{ data.tests }},
  "total_passed": {{ data.passed }},
  "total_count": {{ data.total }},
  "passed": {{ (data.passed == data.total) | tojson }},
  "results_url": "{{ action_data.base_url }}/reports/{{ data.id }}/results"
}
""",
    )
    report = replace(
        CHANGE,
        op="insert",
        old_json=None,
        new_json='{"id": 29, "devices": 3, "tests": 3, "passed": 5, "total": 8}',
    )
    body = json.loads(
        Renderer()
        .request(
            compliance,
            report,
            {"base_url": "https://reports.example.com"},
            timestamp=0,
            delivery_id=DELIVERY,
        )
        .body
    )
    assert body == {
        "event": "created",
        "report": 29,
        "device_count": 3,
        "test_count": 3,
        "total_passed": 5,
        "total_count": 8,
        "passed": False,
        "results_url": "https://reports.example.com/reports/29/results",
    }


def test_the_default_body_splices_the_stored_json_as_it_is() -> None:
    stored = Change(
        id=5,
        schema_name="public",
        table_name="orders",
        op="update",
        old_json='{"id": 7, "tags": ["é", "a\\nb"], "total": 120.00}',
        new_json='{"id": 7, "tags": [], "total": 99.50, "meta": {"k": null}}',
        pk_json='{"id": 7}',
        username=None,
        request_id="r",
        txid="9",
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
    )
    fast = default_body(stored)
    netbox4 = default_body(stored, body_format="netbox4")
    assert "old" not in stored.__dict__ and "new" not in stored.__dict__  # nothing parsed
    # What rendering the parsed row gives, to the digit (the spacing may differ): the relay
    # format is the context but for NetBox 4's request, the netbox4 format NetBox 4's keys of it.
    ctx = context(stored)
    assert loads(fast.decode()) == loads(dumps({k: v for k, v in ctx.items() if k != "request"}))
    assert loads(netbox4.decode()) == loads(dumps({k: ctx[k] for k in NETBOX4_KEYS}))
    assert b'"total": 99.50' in fast and "é".encode() in fast
    assert b'"total": 99.50' in netbox4 and "é".encode() in netbox4
    data = {"team": "ops", "rate": Decimal("0.10"), "n": 2**70}
    with_data = default_body(stored, data)
    assert loads(with_data.decode()) == {
        k: v for k, v in context(stored, data).items() if k != "request"
    }
    assert b'"rate":0.10' in with_data.replace(b" ", b"") and str(2**70).encode() in with_data


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ cycler.__init__.__globals__ }}", "unsafe"),
        ("{{ lipsum.__globals__['os'] }}", "unsafe"),
        ("{{ joiner.__init__.__globals__.os.system('id') }}", "unsafe"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "iterations",
        ),
        ("{% for i in range(1000000) %}{% endfor %}{{ range(10) | list }}", "iterations"),
        ("{{ 'a' * 1000000000 }}", "characters"),
        ("{{ [1] * 1000000000 }}", "characters"),
        ("{{ 9 ** (9 ** 9) }}", "too large a number"),
        ("{{ 'x'.ljust(1000000000) }}", "ljust\\(\\) goes past"),
        ("{% for i in range(90000) %}{{ 'x' * 100 }}{% endfor %}", "characters"),
    ],
)
@pytest.mark.timing
def test_templates_cannot_escape_or_run_away(template: str, reason: str) -> None:
    hook = Webhook(**{**HOOK.__dict__, "body_template": template})
    started = time.monotonic()
    with pytest.raises(RenderError, match=reason) as caught:
        Renderer().request(hook, CHANGE, timestamp=0, delivery_id=DELIVERY)
    assert str(caught.value).startswith("body_template: ")
    assert time.monotonic() - started < 2.0  # stopped, not merely failed eventually


@pytest.mark.parametrize(
    "template",
    ["{{ self._TemplateReference__context }}", "{{ data|attr('__class__') }}", "{{ ''.__doc__ }}"],
)
def test_private_attributes_render_as_nothing(template: str) -> None:
    hook = Webhook(**{**HOOK.__dict__, "body_template": template})
    assert Renderer().request(hook, CHANGE, timestamp=0, delivery_id=DELIVERY).body == b""


@pytest.mark.timing
def test_a_slow_template_is_stopped_after_the_time_limit() -> None:
    # Under every other limit, but slow: each step does real work through the sandbox.
    slow = "{% for i in range(900000) %}{% if data.status ~ i == 'never' %}x{% endif %}{% endfor %}"
    hook = Webhook(**{**HOOK.__dict__, "body_template": slow})
    started = time.monotonic()
    with pytest.raises(RenderError, match="stopped after 1 s"):
        Renderer().request(hook, CHANGE, timestamp=0, delivery_id=DELIVERY)
    assert time.monotonic() - started < 1.5


def test_rows_python_cannot_hold_are_read_exactly_or_refused_in_words() -> None:
    """PostgreSQL happily stores a 5,001-digit numeric and JSON nested 1,000 deep; Python's
    int() stops at 4,300 digits and its parsers at its recursion limit."""
    big = "1" + "0" * 5000
    assert loads(f"[{big}, 7, 2.50]") == [Decimal(big), 7, Decimal("2.50")]
    assert type(loads("[7]")[0]) is int
    deep = replace(CHANGE, new_json='{"j": ' + "[" * 1000 + "]" * 1000 + "}")
    hook = replace(HOOK, body_template="{{ data.j }}")
    with pytest.raises(RenderError, match=r"^the change cannot be read: JSON nested too deeply"):
        Renderer().request(hook, deep, timestamp=0, delivery_id=DELIVERY)
    assert (
        b"[[[[" in Renderer().request(HOOK, deep, timestamp=0, delivery_id=DELIVERY).body
    )  # passed through as is
    huge = replace(CHANGE, new_json=f'{{"n": {big}}}')
    assert (
        Renderer()
        .request(
            replace(HOOK, body_template="{{ data.n }}"), huge, timestamp=0, delivery_id=DELIVERY
        )
        .body
        == big.encode()
    )
    too_large = r"^body_template: a 5001-digit number is too large a number to make an integer of$"
    with pytest.raises(RenderError, match=too_large):
        Renderer().request(
            replace(HOOK, body_template="{{ data.n | int }}"),
            huge,
            timestamp=0,
            delivery_id=DELIVERY,
        )


def test_a_failure_never_shows_a_secret_or_a_value_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CRM_TOKEN", "token-0123456789")
    renderer = Renderer(["CRM_*"])
    # An error that quotes the value: KeyError('token-0123456789').
    leaky = replace(HOOK, body_template='{{ ("{" ~ ("CRM_TOKEN" | env) ~ "}").format() }}')
    with pytest.raises(RenderError) as raised:
        renderer.request(leaky, CHANGE, timestamp=0, delivery_id=DELIVERY)
    assert "token-0123456789" not in str(raised.value) and "******" in str(raised.value)
    bad_secret = replace(HOOK, signature="standard", secret="whsec_not base64 s3cret-abc")
    with pytest.raises(RenderError, match=r"^secret: ") as raised:
        renderer.request(bad_secret, CHANGE, timestamp=0, delivery_id=DELIVERY)
    assert "s3cret-abc" not in str(raised.value)


BIG = "{% set big = 'x' * 8000000 %}"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # The three: a string doubled by `~`, and filters making 300 and 200 MB.
        ("{% set a = 'ab' %}" + "{% set a = a ~ a %}" * 28 + "{{ a|length }}", "'~'"),
        ("{{ ''|center(300000000) }}", "the center filter"),
        ("{{ ('x' * 2000000)|replace('x', 'y' * 100) }}", "the replace filter"),
        ("{{ ('x' * 2000000).replace('x', 'y' * 100) }}", "replace\\(\\)"),
        ("{{ range(1000)|join('x' * 100000) }}", "the join filter"),
        ("{{ ('-' * 10000).join(range(1000)|map('string')) }}", "join\\(\\)"),
        ("{{ '{:>300000000}'.format(1) }}", "format\\(\\)"),
        ("{{ '{:{w}}'.format(1, w=300000000) }}", "format\\(\\)"),
        ("{{ '%0300000000d' % 1 }}", "'%' formatting"),
        ("{{ '%*d' % (300000000, 1) }}", "'%' formatting"),
        ("{{ '%300000000d'|format(1) }}", "the format filter"),
        ("{{ 'a'|indent(300000000) }}", "the indent filter"),
        ("{{ ('a ' * 1000000)|wordwrap(1, wrapstring='x' * 100) }}", "the wordwrap filter"),
        ("{{ ('a.com ' * 100000)|urlize(target='x' * 1000) }}", "the urlize filter"),
        ("{{ ('<' * 4000000)|tojson }}", "the tojson filter"),
        ("{{ ('\\U0001F389' * 1000000)|tojson }}", "the tojson filter"),
        ("{{ ('\"' * 4000000)|e }}", "the e filter"),
        ("{{ ('\\u00df' * 4000000)|upper }}", "the upper filter"),
        ("{{ ('\\t' * 1000).expandtabs(100000) }}", "expandtabs\\(\\)"),
        ("{{ 'abc'.translate({97: 'x' * 8000000}) }}", "translate\\(\\)"),
        ("{{ ('x' * 4000000).split('x')|length }}", "split\\(\\)"),
        ("{{ (1).to_bytes(1000000000, 'big') }}", "to_bytes\\(\\)"),
        ("{{ lipsum(100000) }}", "lipsum\\(\\)"),
        ("{{ [1]|batch(1000000000, 'x') }}", "the batch filter"),
        (BIG + "{{ [big, big, big] }}", "a printed value"),
        (BIG + "{{ [big, big, big]|string }}", "the string filter"),
        (BIG + "{{ [big, big, big]|tojson }}", "the tojson filter"),
        (BIG + "{{ [big, big, big]|pprint }}", "the pprint filter"),
        (BIG + "{{ '%s%s' % (big, big) }}", "'%' formatting"),
        (BIG + "{{ big + big }}", "'\\+'"),
        (
            "{% set x %}{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}{% endset %}",
            "a macro or block",
        ),
        (
            "{% macro m() %}{% for i in range(100) %}{{ 'x' * 1000000 }}{% endfor %}"
            "{% endmacro %}{{ m()|length }}",
            "a macro or block",
        ),
        ("{{ range(10)|map('center', 100000000)|list }}", "the center filter"),
    ],
)
def test_no_value_a_template_makes_goes_past_the_limit(template: str, reason: str) -> None:
    """Each is refused before the large value exists: the render never holds much more than
    one value at the limit (the old sandbox built 200 MB to 1 GB strings for these)."""
    hook = Webhook(**{**HOOK.__dict__, "body_template": template})
    tracemalloc.start()
    try:
        with pytest.raises(RenderError, match=f"{reason} goes past 8,388,608 characters"):
            Renderer().request(hook, CHANGE, timestamp=0, delivery_id=DELIVERY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_OUTPUT


@pytest.mark.parametrize(
    "template",
    [
        # The nested loops over strings: no sandbox hook inside, 40 s on the event loop.
        "{% for a in ''|center(1000) %}{% for b in ''|center(100000) %}{% endfor %}{% endfor %}",
        "{% for k, v in {'a': 1}.items() %}{% for b in range(10**9) %}{% endfor %}{% endfor %}",
        "{{ range(10**9)|sum }}",
        "{{ range(10**9)|map('string')|join }}",
        "{{ {}.fromkeys(range(10**9))|length }}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}",
        "{% for x in [1] recursive %}{% if loop.depth < 2 %}{{ loop(range(10**9)) }}{% endif %}"
        "{% endfor %}",
    ],
)
@pytest.mark.timing
def test_loops_over_anything_are_counted_and_stopped(template: str) -> None:
    hook = Webhook(**{**HOOK.__dict__, "body_template": template})
    started = time.monotonic()
    with pytest.raises(RenderError, match=r"iterations|stopped after 1 s|goes past"):
        Renderer().request(hook, CHANGE, timestamp=0, delivery_id=DELIVERY)
    assert time.monotonic() - started < 1.5


def test_templates_nested_past_pythons_limits_fail_with_a_reason() -> None:
    deep = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"
    with pytest.raises(RenderError, match="body_template: RecursionError"):
        Renderer().check(deep, "body_template")
    recursive = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
    with pytest.raises(RenderError, match="body_template: RecursionError"):
        request(body_template=recursive)
