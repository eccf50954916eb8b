"""Conditions: NetBox's syntax, evaluated without ever raising."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.model import Change, loads
from relay.render.request import context as template_context
from relay.rules.conditions import (
    CONTEXT_KEYS,
    MAX_DEPTH,
    InvalidConditions,
    explain,
    json_depth,
    lookup,
    matches,
    resolve,
    same,
    validate,
)
from support.strategies import (
    column_names,
    condition_sets,
    json_values,
    nested,
    nested_list,
    netbox_paths,
    paths,
    plain_scalars,
)

ROW = {
    "event": "updated",
    "data": {
        "status": "active",
        "qty": 5,
        "price": 9.5,
        "name": "edge-router-01",
        "flags": ["a", "b"],
        "tags": [{"slug": "core"}, {"slug": "lab"}],
        "site": {"region": {"name": "EU"}},
        "note": None,
    },
    "snapshots": {
        "prechange": {"status": "planned", "qty": 5, "site": {"region": {"name": "EU"}}},
        "postchange": {"status": "active", "qty": 5, "site": {"region": {"name": "EU"}}},
    },
}


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (None, True),
        ({}, True),
        ({"attr": "data.status", "value": "active"}, True),
        ({"attr": "data.status", "op": "eq", "value": "planned"}, False),
        ({"attr": "data.status", "value": "planned", "negate": True}, True),
        ({"attr": "data.qty", "op": "gt", "value": 4}, True),
        ({"attr": "data.qty", "op": "gte", "value": 5}, True),
        ({"attr": "data.qty", "op": "lt", "value": 5}, False),
        ({"attr": "data.price", "op": "lte", "value": 9.5}, True),
        ({"attr": "data.status", "op": "in", "value": ["active", "staged"]}, True),
        ({"attr": "data.flags", "op": "contains", "value": "b"}, True),
        ({"attr": "data.name", "op": "contains", "value": "router"}, True),
        ({"attr": "data.tags.slug", "op": "contains", "value": "lab"}, True),
        ({"attr": "data.tags.0.slug", "value": "core"}, True),
        ({"attr": "data.tags.-1.slug", "value": "lab"}, True),
        ({"attr": "data.site.region.name", "value": "EU"}, True),
        ({"attr": "data.name", "op": "regex", "value": r"edge-\w+-\d+"}, True),
        ({"attr": "data.name", "op": "regex", "value": "router"}, False),  # anchored, as NetBox
        ({"attr": "data.note", "value": None}, True),
        ({"attr": "data.status", "op": "changed"}, True),
        ({"attr": "status", "op": "changed"}, True),
        ({"attr": "data.qty", "op": "unchanged"}, True),
        ({"attr": "data.site.region.name", "op": "changed"}, False),
        ({"and": [{"attr": "data.qty", "value": 5}, {"attr": "data.status", "value": "x"}]}, False),
        (
            {"or": [{"attr": "data.qty", "value": 1}, {"attr": "data.status", "value": "active"}]},
            True,
        ),
        (
            {
                "and": [
                    {"or": [{"attr": "data.qty", "value": 1}, {"attr": "data.qty", "value": 5}]},
                    {"attr": "event", "value": "updated"},
                ]
            },
            True,
        ),
        # Missing attributes and incomparable values: false, never an exception.
        ({"attr": "data.missing", "value": "x"}, False),
        ({"attr": "data.missing", "value": "x", "negate": True}, False),
        ({"attr": "data.status.deeper", "value": "x"}, False),
        ({"attr": "data.tags.7.slug", "value": "x"}, False),
        ({"attr": "data.status", "op": "gt", "value": 3}, False),
        ({"attr": "data.qty", "op": "regex", "value": "5"}, False),
        ({"attr": "data.qty", "op": "contains", "value": 5}, False),
    ],
)
def test_examples(conditions: Any, expected: bool) -> None:
    validate(conditions)
    assert matches(conditions, ROW) is expected


def test_explain_says_why_not() -> None:
    verdict = explain(
        {"and": [{"attr": "data.qty", "value": 5}, {"attr": "data.status", "value": "retired"}]},
        ROW,
    )
    assert not verdict.matched
    assert verdict.reason == "data.status eq 'retired' is false (found 'active')"
    assert explain({"attr": "data.nope", "value": 1}, ROW).reason == (
        "data.nope: not present (the row has no column 'nope')"
    )


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ([], "must be an object"),
        ({"and": []}, "non-empty list"),
        ({"and": [{"attr": "x", "value": 1}], "or": []}, "only one key"),
        ({"attr": "data.x", "op": "like", "value": 1}, 'unknown op "like"'),
        ({"attr": "data.x"}, 'needs a "value"'),
        ({"attr": "", "value": 1}, "dotted path"),
        ({"attr": "data..x", "value": 1}, "dotted path"),
        ({"attr": "data.x", "op": "in", "value": "abc"}, "list"),
        ({"attr": "data.x", "op": "regex", "value": "("}, "invalid regular expression"),
        ({"attr": "data.x", "op": "regex", "value": r"(a)\1"}, "RE2 syntax"),  # backreference
        ({"attr": "data.x", "op": "regex", "value": "(?<=a)b"}, "RE2 syntax"),  # lookbehind
        (
            {
                "attr": "data.x",
                "value": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
            },
            "32 levels",
        ),
        ({"attr": "data.x", "op": "changed", "value": 1}, "takes no"),
        ({"attr": "data.x", "value": 1, "negate": "yes"}, "true or false"),
        ({"attr": "data.x", "value": 1, "extra": 2}, "unknown key"),
        (
            {"or": [{"attr": "a", "value": 1}, {"attr": "b", "op": "nope", "value": 1}]},
            r"conditions\.or\[1\]",
        ),
    ],
)
def test_malformed_conditions_are_refused_with_the_place(conditions: Any, message: str) -> None:
    with pytest.raises(InvalidConditions, match=message):
        validate(conditions)


@given(st.one_of(json_values, condition_sets))
def test_validate_only_ever_raises_invalid_conditions(document: Any) -> None:
    with contextlib.suppress(InvalidConditions):
        validate(document)


@given(condition_sets, json_values)
def test_evaluation_never_raises_and_returns_a_bool(conditions: Any, context: Any) -> None:
    validate(conditions)
    context = context if isinstance(context, dict) else {"data": context}
    assert isinstance(matches(conditions, context), bool)


@given(condition_sets, condition_sets, json_values)
def test_and_or_compose_like_boolean_logic(left: Any, right: Any, context: Any) -> None:
    context = {"data": context, "snapshots": {"prechange": context, "postchange": None}}
    a, b = matches(left, context), matches(right, context)
    assert matches({"and": [left, right]}, context) == (a and b)
    assert matches({"or": [left, right]}, context) == (a or b)


@given(paths, json_values, json_values)
def test_negate_inverts_a_comparison_that_was_made(path: str, value: Any, other: Any) -> None:
    context: dict[str, Any] = {}
    keys = path.split(".")
    if any(k.lstrip("-").isdigit() for k in keys):
        return  # list indexes need lists; covered by the examples
    # relay's path starts at the context; NetBox's, at data
    node = context if keys[0] in CONTEXT_KEYS else context.setdefault("data", {})
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    assert resolve(context, path) == value
    plain = {"attr": path, "op": "eq", "value": other}
    assert matches(plain, context) == same(value, other)
    assert matches({**plain, "negate": True}, context) != same(value, other)


@given(paths, json_values, json_values)
def test_changed_and_unchanged_are_complements(path: str, before: Any, after: Any) -> None:
    context = {"snapshots": {"prechange": {"data": before}, "postchange": {"data": after}}}
    changed = matches({"attr": path, "op": "changed"}, context)
    unchanged = matches({"attr": path, "op": "unchanged"}, context)
    assert changed != unchanged


def test_documents_nest_at_most_max_depth_levels() -> None:
    assert json_depth(1, MAX_DEPTH) == 0 and json_depth({"a": [1, {"b": []}]}, MAX_DEPTH) == 4
    assert json_depth(nested_list(1, 1000), MAX_DEPTH) == MAX_DEPTH + 1  # stops counting
    leaf = {"attr": "data.x", "value": 1}
    validate(nested(leaf, 15))  # 31 levels
    with pytest.raises(InvalidConditions, match="nested more than 32 levels deep"):
        validate(nested(leaf, 16))
    with pytest.raises(InvalidConditions, match="nested more than 32 levels deep"):
        validate(nested(leaf, 1000))  # no RecursionError on the way


# Numbers: every form a JSON number can take, parsed the way relay parses rows and rules, with
# the exact value Python's Fraction gives the same text.
json_number_texts = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.builds(
        lambda whole, fraction, exponent: f"{whole}.{fraction}{exponent}",
        st.integers(min_value=-(10**6), max_value=10**6),
        st.integers(min_value=0, max_value=10**6).map(str),
        st.sampled_from(["", "e0", "e3", "E-2", "e+5", "E-40", "e40"]),
    ),
    st.builds(
        lambda whole, exponent: f"{whole}e{exponent}", st.integers(-999, 999), st.integers(-60, 60)
    ),
    st.sampled_from(["0", "-0", "0.0", "1", "1.0", "1.00", "1e0", "10e-1", "0.1", "120.00", "7.5"]),
)
numbers = st.one_of(
    json_number_texts.map(lambda text: (loads(text), Fraction(text))),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (f, Fraction(f))),
)


@given(numbers, numbers)
def test_numbers_compare_by_exact_value_whatever_their_form(
    left: tuple[Any, Fraction], right: tuple[Any, Fraction]
) -> None:
    (value, exact), (other, other_exact) = left, right
    context = {"data": {"n": value}}
    expected = {
        "eq": exact == other_exact,
        "gt": exact > other_exact,
        "gte": exact >= other_exact,
        "lt": exact < other_exact,
        "lte": exact <= other_exact,
    }
    for op, truth in expected.items():
        assert matches({"attr": "data.n", "op": op, "value": other}, context) is truth, op
    assert matches({"attr": "data.n", "op": "in", "value": ["x", True, other]}, context) is (
        exact == other_exact
    )
    assert matches(
        {"attr": "data.l", "op": "contains", "value": other}, {"data": {"l": [value]}}
    ) is (exact == other_exact)


@pytest.mark.parametrize(
    ("row", "condition", "expected"),
    [
        ('{"total": 120.00}', {"attr": "data.total", "op": "gt", "value": 100}, True),
        ('{"qty": 8}', {"attr": "data.qty", "op": "gt", "value": Decimal("7.5")}, True),
        ('{"qty": 7}', {"attr": "data.qty", "op": "gte", "value": Decimal("7.5")}, False),
        ('{"x": 1.2e2}', {"attr": "data.x", "value": 120}, True),
        ('{"x": 120}', {"attr": "data.x", "op": "in", "value": [Decimal("1.2E+2")]}, True),
        ('{"x": 1}', {"attr": "data.x", "value": True}, False),  # a number is no boolean
        ('{"x": true}', {"attr": "data.x", "op": "in", "value": [1]}, False),
        ('{"x": [1, 2.0]}', {"attr": "data.x", "value": [1.0, 2]}, True),
        ('{"x": {"a": 0}}', {"attr": "data.x", "value": {"a": -0.0}}, True),
        ('{"x": "10"}', {"attr": "data.x", "op": "gt", "value": 9}, False),  # no coercion
        (f'{{"x": 1{"0" * 5000}}}', {"attr": "data.x", "op": "gt", "value": 10**400}, True),
        (f'{{"x": 1{"0" * 5000}}}', {"attr": "data.x", "value": Decimal(f"1E+{5000}")}, True),
        ('{"x": 1e400}', {"attr": "data.x", "op": "gt", "value": 1.7976931348623157e308}, True),
    ],
)
def test_numbers_from_rows_compare_by_value(
    row: str, condition: dict[str, Any], expected: bool
) -> None:
    assert matches(condition, {"data": loads(row)}) is expected


def test_a_reason_never_fails_on_the_value_it_describes() -> None:
    huge = 10**5000  # Python cannot print it (the 4,300-digit limit)
    verdict = explain({"attr": "data.x", "value": 1}, {"data": {"x": huge}})
    assert verdict.reason == "data.x eq 1 is false (found <integer of about 5,000 digits>)"
    deep = nested_list(1, 5000)
    assert "found [[[" in explain({"attr": "data.x", "value": 1}, {"data": {"x": deep}}).reason
    assert not matches(
        {"attr": "data.x", "op": "changed"},
        {"snapshots": {"prechange": {"x": deep}, "postchange": {"x": deep}}},
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data.tags.²", ["superscript"]),  # a key: "²" is a digit to str.isdigit(), not to int()
        ("data.tags.--1", []),
        ("data.tags.-0.slug", "core"),
        ("data.tags.00001.slug", "lab"),
        ("data.tags." + "9" * 5000, None),  # past the end of any list
        ("data.tags.-" + "9" * 19, None),
    ],
)
def test_any_path_the_validator_accepts_can_be_looked_up(path: str, expected: str | None) -> None:
    validate({"attr": path, "value": 1})
    tags = [{"slug": "core", "²": "superscript"}, {"slug": "lab"}]
    found = lookup({"data": {"tags": tags}}, path)
    assert found == expected if expected is not None else repr(found) == "<missing>"


@pytest.mark.timing
def test_regular_expressions_take_linear_time() -> None:
    condition = {"attr": "data.name", "op": "regex", "value": "(a+)+$"}
    started = time.monotonic()
    # Python's re took 4 s at 27 characters here, doubling with each one more.
    assert not matches(condition, {"data": {"name": "a" * 28 + "b"}})
    assert not matches(condition, {"data": {"name": "a" * 1_000_000 + "b"}})
    assert matches(condition, {"data": {"name": "a" * 1_000_000}})
    assert time.monotonic() - started < 2.0


# NetBox's paths: relative to the object's data, with a choice's value and a foreign key's id
# as the database holds them (text status, site_id).
NETBOX_ROW = {
    "event": "updated",
    "id": 41,
    "data": {
        "id": 7,
        "status": "active",
        "site_id": 3,
        "tenant_id": None,
        "rack": None,
        "role": {"id": 5, "name": "leaf"},  # a related row nested in data
        "tags": ["core", "lab"],
        "flags": [{"value": "x"}, "y"],
        "名前": "エッジ",
        "custom_field_data": {"rack_unit": {"value": 4}},
    },
    "snapshots": {
        "prechange": {"id": 7, "status": "planned", "site_id": 3, "tenant_id": None},
        "postchange": {"id": 7, "status": "active", "site_id": 3, "tenant_id": None},
    },
}


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("status", "active"),
        ("status.value", "active"),  # a choice stored as text is its own value
        ("data.status.value", "active"),  # relay's path has the same bridge
        ("status.value.value", None),  # only a last "value" step
        ("status.label", None),  # the serializer's; never in the database
        ("site.id", 3),  # NetBox's site.id is relay's site_id
        ("data.site.id", 3),
        ("site_id", 3),
        ("site_id.id", None),  # site_id is present: followed, and a number has no id
        ("site_id.value", 3),
        ("site.name", None),  # site's columns are not in the row
        ("site", None),
        ("tenant.id", None),  # a null key: NetBox's tenant is null too
        ("rack.value", None),  # a null choice has no value
        ("role.id", 5),  # a nested object is followed as it is
        ("role.name", "leaf"),
        ("id", 41),  # relay's change id wins over the column...
        ("data.id", 7),  # ...which data.id reaches
        ("id.value", 41),
        ("data", NETBOX_ROW["data"]),
        ("value", None),  # no column named value
        ("tags.slug", []),  # on a list, the key of every item: strings have none
        ("tags.value", []),  # "value" on a list is a key of each item, not the bridge
        ("tags.0.value", "core"),
        ("flags.value", ["x"]),
        ("名前.value", "エッジ"),
        ("custom_field_data.rack_unit.value", 4),
    ],
)
def test_netbox_paths_reach_what_the_database_holds(attr: str, expected: Any) -> None:
    validate({"attr": attr, "value": expected})
    found = resolve(NETBOX_ROW, attr)
    if expected is None:
        assert repr(found) == "<missing>"
    else:
        assert same(found, expected)


@pytest.mark.parametrize(
    ("data", "attr", "expected"),
    [
        ({"value": "v"}, "value", "v"),  # a column named value
        ({"value": "v"}, "value.value", "v"),
        ({"value": {"value": 1}}, "value.value", 1),
        ({"site": "Paris", "site_id": 3}, "site.id", None),  # the column site is followed
        ({"site": {"id": 9}, "site_id": 3}, "site.id", 9),
        ({"site": None, "site_id": 3}, "site.id", None),
        ({"site_id": {"id": 3}}, "site.id", None),  # a key column holds a plain value
        ({"site_id": True}, "site.id", True),
        ({"site_id": "a.b"}, "site.id", "a.b"),
        ({"a.b": 1}, "a.b", None),  # a key holding a dot cannot be named
        ({"a.b": 1, "a": {"b": 2}}, "a.b", 2),
    ],
)
def test_columns_named_like_the_bridges(data: Any, attr: str, expected: Any) -> None:
    found = resolve({"data": data}, attr)
    assert repr(found) == "<missing>" if expected is None else same(found, expected)


@pytest.mark.parametrize(
    ("context", "attr", "reason"),
    [
        (NETBOX_ROW, "status.label", "status.label: not present (a label is NetBox's serializer"),
        (NETBOX_ROW, "site.name", "site.name: not present (the row has site_id, not site's"),
        (NETBOX_ROW, "tenant.id", "tenant.id: not present (tenant_id is null)"),
        (NETBOX_ROW, "serial", "serial: not present (the row has no column 'serial')"),
        (NETBOX_ROW, "status.value.value", "status.value.value: not present (status holds 'a"),
        (NETBOX_ROW, "rack.value", "rack.value: not present (rack holds null, which has no 'va"),
        (NETBOX_ROW, "data.serial", "data.serial: not present (the row has no column 'serial')"),
        (NETBOX_ROW, "request.user", "request.user: not present"),
        ({"event": "truncated", "data": None}, "status.value", "status.value: not present (the"),
    ],
)
def test_explain_says_why_a_netbox_path_leads_nowhere(
    context: dict[str, Any], attr: str, reason: str
) -> None:
    verdict = explain({"attr": attr, "value": "x"}, context)
    assert not verdict.matched
    assert verdict.reason.startswith(reason)


def test_a_deleted_row_is_judged_by_its_old_image() -> None:
    old = {"id": 7, "status": "active", "site_id": 3}
    deleted = {"event": "deleted", "data": old, "snapshots": {"prechange": old, "postchange": None}}
    netbox = {"and": [{"attr": "status.value", "value": "active"}, {"attr": "site.id", "value": 3}]}
    assert matches(netbox, deleted)
    assert matches({"attr": "status.value", "op": "changed"}, deleted)


@pytest.mark.parametrize("attr", ["status.value", "status", "data.status", "tenant.id", "data"])
def test_every_path_of_a_row_that_appeared_or_went_has_changed(attr: str) -> None:
    """Even one that leads nowhere on the side that has a row (tenant_id is null)."""
    row = {"status": None, "tenant_id": None}
    inserted = {"snapshots": {"prechange": None, "postchange": row}}
    deleted = {"snapshots": {"prechange": row, "postchange": None}}
    truncated = {"snapshots": {"prechange": None, "postchange": None}}
    for context, changed in ((inserted, True), (deleted, True), (truncated, False)):
        assert matches({"attr": attr, "op": "changed"}, context) is changed
        assert matches({"attr": attr, "op": "unchanged"}, context) is not changed


@pytest.mark.parametrize(
    ("attr", "changed"),
    [
        ("status.value", True),
        ("status", True),
        ("data.status.value", True),
        ("site.id", False),
        ("site_id", False),
        ("tenant.id", False),  # null on both sides: leads nowhere on both
        ("id", False),  # a column here: only the row has a before and after
        ("data", True),
        ("status.label", False),
    ],
)
def test_changed_takes_netbox_paths(attr: str, changed: bool) -> None:
    assert matches({"attr": attr, "op": "changed"}, NETBOX_ROW) is changed
    assert matches({"attr": attr, "op": "unchanged"}, NETBOX_ROW) is not changed


@given(netbox_paths, json_values, condition_sets)
def test_a_netbox_path_is_data_s(path: str, data: Any, shape: Any) -> None:
    """NetBox's path means what relay's ``data.`` path means, for every op."""
    context = {"data": data, "snapshots": {"prechange": data, "postchange": {"data": data}}}
    netbox = resolve(context, path)
    relays = resolve(context, f"data.{path}")
    assert netbox is relays or same(netbox, relays)
    leaf = shape if "attr" in shape else {"attr": path, "value": 1}
    assert matches({**leaf, "attr": path}, context) == matches(
        {**leaf, "attr": f"data.{path}"}, context
    )


@given(column_names, plain_scalars, condition_sets)
def test_value_of_a_choice_is_the_choice(column: str, stored: Any, shape: Any) -> None:
    """``X.value`` of a column holding a plain value behaves as ``X``, whatever the op."""
    context = {"data": {column: stored}}
    assert resolve(context, f"{column}.value") is stored
    leaf = shape if "attr" in shape else {"attr": column, "value": stored}
    assert matches({**leaf, "attr": f"{column}.value"}, context) == matches(
        {**leaf, "attr": column}, context
    )


@given(column_names, st.none() | plain_scalars, st.none() | plain_scalars, st.booleans())
def test_changed_on_a_choice_s_value_is_changed_on_the_choice(
    column: str, before: Any, after: Any, inserted: bool
) -> None:
    old = None if inserted else {column: before}
    context = {"snapshots": {"prechange": old, "postchange": {column: after}}}
    for op in ("changed", "unchanged"):
        assert matches({"attr": f"{column}.value", "op": op}, context) == matches(
            {"attr": column, "op": op}, context
        )


@given(column_names, st.none() | plain_scalars, st.none() | json_values)
def test_a_foreign_key_s_id_is_its_column(column: str, key: Any, nested_row: Any) -> None:
    """``X.id`` is ``X_id`` when the row has no ``X``; a nested ``X`` is followed instead."""
    flat = {"data": {f"{column}_id": key}}
    found = resolve(flat, f"{column}.id")
    assert found is key if key is not None else repr(found) == "<missing>"
    nested_context = {"data": {f"{column}_id": key, column: nested_row}}
    assert repr(resolve(nested_context, f"{column}.id")) == repr(lookup(nested_row, "id"))


def test_the_context_names_are_the_template_context_s() -> None:
    """A name templates get is relay's in conditions too; a new one must be decided here (it
    would take a NetBox path starting with a column of that name)."""
    change = Change(
        id=5,
        schema_name="public",
        table_name="dcim_device",
        op="update",
        old_json='{"id": 7}',
        new_json='{"id": 7}',
        pk_json='{"id": 7}',
        username=None,
        request_id="r",
        txid="9",
        created_at=datetime(2026, 11, 22, tzinfo=UTC),
    )
    assert set(template_context(change)) <= CONTEXT_KEYS
    assert set(template_context(change, {"status": "x"})) - CONTEXT_KEYS == {"status"}
