"""``relay rules check``: every rule and webhook checked at once, as ``relay run`` loads them."""

from __future__ import annotations

from typing import Annotated

import typer

from relay.cli.common import (
    EnvFile,
    OptionalDsn,
    database,
    dsn_of,
    fail,
    group,
    load_settings,
    out,
)
from relay.delivery import tls
from relay.reasons import scrub
from relay.render.pool import BlockingRenderPool
from relay.rules import paths, ruleset
from relay.store import Store

rules_app = group("All rules at once.")


@rules_app.command("check")
def rules_check(
    dsn: OptionalDsn = None,
    env_file: EnvFile = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on warnings too (for CI).")
    ] = False,
) -> None:
    """Compile every template and validate every condition, check each webhook's related option
    against the tables its rules cover (with this role's rights); report each problem, and warn
    about each condition's path that no tracked column can satisfy."""
    settings = load_settings(env_file)
    with database(dsn_of(dsn, settings)) as conn:
        store = Store(conn)
        loaded = ruleset.load(conn, everything=True)
        unused = [ruleset.webhook_of(row) for row in store.unused_webhooks()]
        tables = paths.tables_of(store.tracked_columns())
        tracked = [(t.schema_name, t.table_name) for t in store.tracked()]
        related = ruleset.related_problems(loaded.rules, tracked, store.related_problem)
    with BlockingRenderPool(settings.template_env_globs) as renders:
        problems = ruleset.check(loaded.rules, renders, unused, tls.ca_problem) + related
    warnings = paths.warnings(loaded.rules, tables)
    for problem in problems:
        out.print(scrub(str(problem)), highlight=False, soft_wrap=True)
    for warning in warnings:
        out.print(f"warning: {scrub(str(warning))}", highlight=False, soft_wrap=True)
    hooks = len({rule.webhook.id for rule in loaded.rules}) + len(unused)
    counted = f"{len(loaded.rules)} rule(s), {hooks} webhook(s)"
    warned = f", {len(warnings)} warning(s)" if warnings else ""
    if problems:
        fail(f"{len(problems)} problem(s){warned} in {counted}")
    if warnings and strict:
        fail(f"{len(warnings)} warning(s) in {counted} (--strict)")
    out.print(f"{counted}: no problems{warned}", highlight=False)
