"""Conditions: NetBox's syntax, evaluated without ever raising."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.conditions import InvalidConditions, explain, lookup, matches, validate

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
def test_examples(conditions, expected):
    validate(conditions)
    assert matches(conditions, ROW) is expected


def test_explain_says_why_not():
    verdict = explain(
        {"and": [{"attr": "data.qty", "value": 5}, {"attr": "data.status", "value": "retired"}]},
        ROW,
    )
    assert not verdict.matched
    assert verdict.reason == "data.status eq 'retired' is false (found 'active')"
    assert explain({"attr": "data.nope", "value": 1}, ROW).reason == "data.nope: not present"


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
        ({"attr": "data.x", "op": "changed", "value": 1}, "takes no"),
        ({"attr": "data.x", "value": 1, "negate": "yes"}, "true or false"),
        ({"attr": "data.x", "value": 1, "extra": 2}, "unknown key"),
        (
            {"or": [{"attr": "a", "value": 1}, {"attr": "b", "op": "nope", "value": 1}]},
            r"conditions\.or\[1\]",
        ),
    ],
)
def test_malformed_conditions_are_refused_with_the_place(conditions, message):
    with pytest.raises(InvalidConditions, match=message):
        validate(conditions)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00"), max_size=5),  # jsonb has no NUL
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "data", "x", "0"]), children, max_size=3)
    ),
    max_leaves=12,
)
paths = st.lists(
    st.sampled_from(["a", "b", "data", "x", "0", "-1", "1"]), min_size=1, max_size=4
).map(".".join)
leaf_conditions = (
    st.builds(
        lambda attr, op, value, negate: {"attr": attr, "op": op, "value": value, "negate": negate},
        paths,
        st.sampled_from(["eq", "gt", "gte", "lt", "lte", "contains"]),
        json_values,
        st.booleans(),
    )
    | st.builds(
        lambda attr, values: {"attr": attr, "op": "in", "value": values},
        paths,
        st.lists(json_values, max_size=3),
    )
    | st.builds(
        lambda attr, op: {"attr": attr, "op": op}, paths, st.sampled_from(["changed", "unchanged"])
    )
)
condition_sets = st.recursive(
    leaf_conditions,
    lambda children: st.builds(
        lambda k, items: {k: items},
        st.sampled_from(["and", "or"]),
        st.lists(children, min_size=1, max_size=3),
    ),
    max_leaves=8,
)


@given(st.one_of(json_values, condition_sets))
def test_validate_only_ever_raises_invalid_conditions(document):
    with contextlib.suppress(InvalidConditions):
        validate(document)


@given(condition_sets, json_values)
def test_evaluation_never_raises_and_returns_a_bool(conditions, context):
    validate(conditions)
    context = context if isinstance(context, dict) else {"data": context}
    assert isinstance(matches(conditions, context), bool)


@given(condition_sets, condition_sets, json_values)
def test_and_or_compose_like_boolean_logic(left, right, context):
    context = {"data": context, "snapshots": {"prechange": context, "postchange": None}}
    a, b = matches(left, context), matches(right, context)
    assert matches({"and": [left, right]}, context) == (a and b)
    assert matches({"or": [left, right]}, context) == (a or b)


@given(paths, json_values, json_values)
def test_negate_inverts_a_comparison_that_was_made(path, value, other):
    context: dict = {}
    node = context
    keys = path.split(".")
    if any(k.lstrip("-").isdigit() for k in keys):
        return  # list indexes need lists; covered by the examples
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    assert lookup(context, path) == value
    plain = {"attr": path, "op": "eq", "value": other}
    assert matches(plain, context) == (value == other)
    assert matches({**plain, "negate": True}, context) == (value != other)


@given(paths, json_values, json_values)
def test_changed_and_unchanged_are_complements(path, before, after):
    context = {"snapshots": {"prechange": {"data": before}, "postchange": {"data": after}}}
    changed = matches({"attr": path, "op": "changed"}, context)
    unchanged = matches({"attr": path, "op": "unchanged"}, context)
    assert changed != unchanged
