"""Rotating a webhook's secret with a period (relay webhook rotate-secret): receivers that know
either secret accept what relay sends during the period, only the new one after it, and no
secret is ever shown."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from pathlib import Path

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook as Verifier
from standardwebhooks.webhooks import WebhookVerificationError
from structlog.testing import capture_logs

from relay.db import Conn
from support.cli import process, relay
from support.db import one_row
from support.receivers import Received, receiver
from support.worker import running, setup, until

OLD = "whsec_" + base64.b64encode(b"the-old-key-of-32-bytes-exactly!").decode()
NEW = "whsec_" + base64.b64encode(b"the-new-key-of-32-bytes-exactly!").decode()
OLD_NETBOX = "old-netbox-secret"
NEW_NETBOX = "new-netbox-secret"
SECRETS = (OLD, NEW, OLD_NETBOX, NEW_NETBOX, OLD[6:], NEW[6:])


def standard_accepts(secret: str, request: Received) -> bool:
    """What a Standard Webhooks receiver holding ``secret`` says (the reference library)."""
    try:
        Verifier(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def netbox_accepts(secret: str, request: Received) -> bool:
    """What a NetBox receiver holding ``secret`` says."""
    expected = hmac.new(secret.encode(), request.body, hashlib.sha512).hexdigest()
    return hmac.compare_digest(expected, request.headers["X-Hook-Signature"])


def rotate(dsn: str, name: str, secret: str, grace: str, tmp_path: Path) -> str:
    given = tmp_path / f"{name}.secret"
    given.write_text(secret + "\n")
    done = relay(
        "webhook", "rotate-secret", name, "--grace", grace, "--secret-file", str(given), dsn=dsn
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


def test_during_the_period_both_secrets_verify_and_after_it_only_the_new_one(
    rconn: Conn, relay_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One relay runs across the end of the period: nothing reloads it, yet the requests it
    signs after the end verify with the new secret only."""
    period = 6.0

    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url + "/std", "std", secret=OLD, signature="standard")
            setup(rconn, r.url + "/nb", "nb", secret=OLD_NETBOX, signature="netbox")
            said = rotate(relay_dsn, "std", NEW, f"{period:g}s", tmp_path)
            assert "secret rotated; previous secret valid until" in said
            assert "both signatures" in said
            said = rotate(relay_dsn, "nb", NEW_NETBOX, f"{period:g}s", tmp_path)
            assert "it signs X-Hook-Signature until then, the new one after" in said
            ends = one_row(
                rconn.execute(
                    "SELECT extract(epoch FROM max(previous_secret_until))::float8 "
                    "FROM relay.webhooks"
                )
            )[0]
            rconn.execute("INSERT INTO items VALUES (1, 1)")
            async with running(relay_dsn):
                await until(lambda: len(r.requests) == 2)
                during = {q.path: q for q in r.requests}
                assert all(int(q.headers.get("webhook-timestamp", "0")) < ends for q in r.requests)
                std, nb = during["/hook/std"], during["/hook/nb"]
                assert len(std.headers["webhook-signature"].split(" ")) == 2
                assert standard_accepts(OLD, std) and standard_accepts(NEW, std)
                assert netbox_accepts(OLD_NETBOX, nb) and not netbox_accepts(NEW_NETBOX, nb)

                await until(lambda: time.time() > ends + 1, timeout=period + 5)
                rconn.execute("INSERT INTO items VALUES (2, 2)")
                await until(lambda: len(r.requests) == 4)
                after = {q.path: q for q in r.requests[2:]}
                std, nb = after["/hook/std"], after["/hook/nb"]
                assert len(std.headers["webhook-signature"].split(" ")) == 1
                assert standard_accepts(NEW, std) and not standard_accepts(OLD, std)
                assert netbox_accepts(NEW_NETBOX, nb) and not netbox_accepts(OLD_NETBOX, nb)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert logs, "the relay logged"
    shown = relay("webhook", "show", "std", dsn=relay_dsn).stdout
    shown += relay("status", dsn=relay_dsn).stdout
    assert "stopped signing at" in shown
    printed = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in printed.out + printed.err + shown + repr(logs)


def test_status_and_show_say_until_when_the_previous_secret_is_valid(
    rconn: Conn, relay_dsn: str
) -> None:
    setup(rconn, "http://127.0.0.1:9/hook", "hook", secret=OLD_NETBOX)
    done = process(
        "webhook", "rotate-secret", "hook", "--grace", "2h", dsn=relay_dsn, given=NEW_NETBOX
    )
    assert (done.returncode, done.stderr) == (0, ""), done
    assert "previous secret valid until" in done.stdout
    shown = relay("webhook", "show", "hook", dsn=relay_dsn).stdout
    status = relay("status", dsn=relay_dsn).stdout
    assert "previous secret valid until" in shown and "previous secret valid until" in status
    assert one_row(rconn.execute("SELECT secret, previous_secret FROM relay.webhooks")) == (
        NEW_NETBOX,
        OLD_NETBOX,
    )
    for secret in SECRETS:
        assert secret not in done.stdout + shown + status
    # An edit of the secret replaces both at once.
    edited = relay(
        "webhook", "edit", "hook", "--secret-env", "S", dsn=relay_dsn, env={"S": "third"}
    )
    assert edited.returncode == 0, edited
    assert one_row(
        rconn.execute("SELECT previous_secret, previous_secret_until FROM relay.webhooks")
    ) == (
        "",
        None,
    )
    assert "(none)" in relay("webhook", "show", "hook", dsn=relay_dsn).stdout


@pytest.mark.parametrize("source", ["/dev/zero", "huge", "stdin"])
def test_a_secret_file_or_stream_longer_than_any_secret_is_refused_unread(
    rconn: Conn, relay_dsn: str, tmp_path: Path, source: str
) -> None:
    """A wrong file (/dev/zero, a large one) or stream is refused in one line, exit 2, before
    it is read whole, and nothing changes."""
    setup(rconn, "http://127.0.0.1:9/hook", "hook", secret=OLD_NETBOX)
    huge = tmp_path / "huge"
    huge.write_text("x" * 1_000_000)
    given = {"/dev/zero": ["--secret-file", "/dev/zero"], "huge": ["--secret-file", str(huge)]}
    done = process(
        "webhook",
        "rotate-secret",
        "hook",
        *given.get(source, []),
        dsn=relay_dsn,
        given="y\n" * 500_000 if source == "stdin" else "",
    )
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "longer than 65536 characters" in done.stderr
    assert one_row(rconn.execute("SELECT secret, previous_secret FROM relay.webhooks")) == (
        OLD_NETBOX,
        "",
    )


def test_a_byte_order_mark_before_the_secret_is_no_part_of_it(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """A secret file saved with a byte order mark (Notepad's UTF-8) rotates to the secret the
    receiver holds, not to one it cannot verify."""
    setup(rconn, "http://127.0.0.1:9/hook", "hook", secret=OLD_NETBOX)
    rotate(relay_dsn, "hook", "\ufeff" + NEW_NETBOX, "1h", tmp_path)
    assert one_row(rconn.execute("SELECT secret FROM relay.webhooks")) == (NEW_NETBOX,)


def test_a_period_of_0_switches_at_once(rconn: Conn, relay_dsn: str, tmp_path: Path) -> None:
    setup(rconn, "http://127.0.0.1:9/hook", "hook", secret=OLD_NETBOX)
    given = tmp_path / "secret"
    given.write_text(NEW_NETBOX)
    done = relay(
        "webhook",
        "rotate-secret",
        "hook",
        "--grace",
        "0",
        "--secret-file",
        str(given),
        dsn=relay_dsn,
    )
    assert done.stdout == "webhook hook: secret rotated; the new secret alone signs from now on\n"
    assert one_row(
        rconn.execute("SELECT secret, previous_secret, previous_secret_until FROM relay.webhooks")
    ) == (NEW_NETBOX, "", None)


@pytest.mark.parametrize(
    ("signature", "secret", "grace", "said"),
    [
        ("standard", "not-whsec", "1h", "the new secret cannot sign: a Standard Webhooks secret"),
        ("standard", "", "1h", "the new secret is empty: give the secret itself"),
        ("netbox", OLD_NETBOX, "1h", "the new secret is the webhook's current one"),
        ("netbox", "a\nb", "1h", "a NetBox signature's secret is one line"),
        ("netbox", "new\x00one", "1h", "the new secret holds a control or invisible character"),
        ("netbox", "new\u200bone", "1h", "the new secret holds a control or invisible character"),
        ("standard", NEW + "\x1b", "1h", "the new secret holds a control or invisible character"),
        ("netbox", NEW_NETBOX, "45d", "--grace '45d': give a period like 90s, 30m, 24h or 7d"),
        ("netbox", NEW_NETBOX, "soon", "--grace 'soon': give a period like"),
        ("none", NEW_NETBOX, "1h", "the webhook's signature is none: it signs nothing"),
    ],
)
def test_a_bad_secret_or_period_is_refused_in_one_line_and_nothing_changes(
    rconn: Conn, relay_dsn: str, signature: str, secret: str, grace: str, said: str
) -> None:
    setup(
        rconn,
        "http://127.0.0.1:9/hook",
        "hook",
        secret=OLD if signature == "standard" else OLD_NETBOX,
        signature=signature,
    )
    before = one_row(rconn.execute("SELECT secret, previous_secret FROM relay.webhooks"))
    done = process(
        "webhook", "rotate-secret", "hook", "--grace", grace, dsn=relay_dsn, given=secret
    )
    assert done.returncode == 2 and done.stdout == ""
    assert said in done.stderr and done.stderr.count("\n") == 1, done.stderr
    for value in SECRETS:
        assert value not in done.stderr
    assert secret.strip() == "" or secret not in done.stderr
    assert one_row(rconn.execute("SELECT secret, previous_secret FROM relay.webhooks")) == before


def test_no_such_webhook_and_an_unreadable_file_are_one_line(
    relay_dsn: str, tmp_path: Path
) -> None:
    missing = relay(
        "webhook", "rotate-secret", "nope", "--secret-file", str(tmp_path / "gone"), dsn=relay_dsn
    )
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "No such file or directory" in missing.stderr
    latin = tmp_path / "latin-1"
    latin.write_bytes("s\u00e9cret".encode("latin-1"))
    for unreadable, said in ((tmp_path, "Is a directory"), (latin, "not UTF-8 text")):
        done = relay(
            "webhook", "rotate-secret", "nope", "--secret-file", str(unreadable), dsn=relay_dsn
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done
        assert f"{said}; give a readable UTF-8 file holding the secret" in done.stderr
    given = tmp_path / "secret"
    given.write_text(NEW_NETBOX)
    unknown = relay("webhook", "rotate-secret", "nope", "--secret-file", str(given), dsn=relay_dsn)
    assert unknown.returncode == 2 and "no webhook named 'nope'" in unknown.stderr


THIRD = "whsec_" + base64.b64encode(b"the-3rd-key-of-32-bytes-exactly!").decode()


def test_rotating_again_during_the_period_cuts_no_receiver_off(
    rconn: Conn, relay_dsn: str, tmp_path: Path
) -> None:
    """A second rotation within the first's period keeps what signs now: a NetBox receiver
    still holding the first secret (the second never signed) and a Standard Webhooks one
    holding either earlier secret go on accepting, for the new period."""

    async def scenario() -> None:
        async with receiver() as r:
            setup(rconn, r.url + "/std", "std", secret=OLD, signature="standard")
            setup(rconn, r.url + "/nb", "nb", secret=OLD_NETBOX, signature="netbox")
            for name, secrets in (("std", (NEW, THIRD)), ("nb", (NEW_NETBOX, "third-netbox"))):
                for secret in secrets:
                    rotate(relay_dsn, name, secret, "1h", tmp_path)
            rconn.execute("INSERT INTO items VALUES (1, 1)")
            async with running(relay_dsn):
                await until(lambda: len(r.requests) == 2)
        sent = {q.path: q for q in r.requests}
        std, nb = sent["/hook/std"], sent["/hook/nb"]
        assert all(standard_accepts(secret, std) for secret in (OLD, NEW, THIRD))
        assert netbox_accepts(OLD_NETBOX, nb)

    asyncio.run(scenario())
    # Rotating back to the secret that signs now leaves nothing else signing.
    rotate(relay_dsn, "nb", OLD_NETBOX, "1h", tmp_path)
    assert one_row(
        rconn.execute(
            "SELECT secret, previous_secret, previous_secret_until FROM relay.webhooks "
            "WHERE name = 'nb'"
        )
    ) == (OLD_NETBOX, "", None)


def test_switching_to_standard_in_sql_during_a_period_must_clear_the_previous_secret(
    rconn: Conn, relay_dsn: str
) -> None:
    """A NetBox secret left signing beside a Standard Webhooks one would fail every request of
    the period: the database refuses it, saying what to set (relay webhook edit does it)."""
    setup(rconn, "http://127.0.0.1:9/hook", "hook", secret=OLD_NETBOX)
    done = process("webhook", "rotate-secret", "hook", dsn=relay_dsn, given=NEW_NETBOX)
    assert done.returncode == 0, done
    switch = "UPDATE relay.webhooks SET signature = 'standard', secret = %s"
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        rconn.execute(switch, (NEW,))
    said = str(refused.value)
    assert "previous_secret cannot sign with signature standard" in said
    assert "set previous_secret = '', previous_secret_until = NULL" in said
    assert not any(secret in said for secret in SECRETS)
    rconn.execute(switch + ", previous_secret = '', previous_secret_until = NULL", (NEW,))
    edited = relay(
        "webhook",
        "edit",
        "hook",
        "--signature",
        "netbox",
        "--secret-env",
        "S",
        dsn=relay_dsn,
        env={"S": NEW_NETBOX},
    )
    assert edited.returncode == 0, edited


def test_two_rotations_at_once_lose_no_secret(rconn: Conn, relay_dsn: str, tmp_path: Path) -> None:
    """A rotation waits for one under way (a form sent twice, two people): it then keeps what
    that one left signing, so the secret it put in, which receivers were given, still signs."""
    setup(rconn, "http://127.0.0.1:9/hook", "hook", secret=OLD, signature="standard")
    given = tmp_path / "third"
    given.write_text(THIRD)

    async def scenario() -> None:
        with psycopg.connect(relay_dsn) as other:
            other.execute(
                "UPDATE relay.webhooks SET secret = %s, previous_secret = %s, "
                "previous_secret_until = now() + interval '1 hour'",
                (NEW, OLD),
            )
            second = asyncio.create_task(
                asyncio.to_thread(
                    process,
                    "webhook",
                    "rotate-secret",
                    "hook",
                    "--secret-file",
                    str(given),
                    dsn=relay_dsn,
                )
            )
            await until(
                lambda: (
                    rconn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database()"
                    ).fetchone()
                    == (1,)
                ),
                timeout=30,
            )
            other.commit()
        done = await second
        assert done.returncode == 0, done

    asyncio.run(scenario())
    secret, previous = one_row(rconn.execute("SELECT secret, previous_secret FROM relay.webhooks"))
    assert secret == THIRD
    assert set(previous.splitlines()) == {NEW, OLD}
