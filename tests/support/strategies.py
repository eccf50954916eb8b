"""Hypothesis strategies for JSON values and NetBox-style conditions, well-formed or not."""

from __future__ import annotations

from hypothesis import strategies as st

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # jsonb holds no NUL and no lone surrogate (neither can reach a rule)
    | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "data", "x", "0"]), children, max_size=3)
    ),
    max_leaves=12,
)


PATH_PARTS = ["a", "b", "data", "x", "0", "-1", "1", "²", "--1", "-0", "\u0661", "9" * 30]
NETBOX_PARTS = ["value", "id", "label", "site", "site_id", "status", "é"]
"""What NetBox's paths step through: a choice's value and label, a foreign key and its column."""

paths = st.lists(st.sampled_from(PATH_PARTS + NETBOX_PARTS), min_size=1, max_size=4).map(".".join)

column_names = st.sampled_from(["a", "x", "status", "site", "value", "label", "é", "名前", "0"])
"""Column names as NetBox's paths begin: none of them a context name."""

netbox_paths = st.builds(
    lambda first, rest: ".".join([first, *rest]),
    column_names,
    st.lists(st.sampled_from(PATH_PARTS + NETBOX_PARTS), max_size=3),
)
"""Paths relative to the object's data, as NetBox writes them."""

plain_scalars = (
    st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=5)
)
"""What a choice or a foreign key column holds, null aside."""


RE2_PATTERNS = ["a", r"edge-\w+-\d+", "(a+)+$", "(?i)ab|cd", r"\p{L}+", "[^x]*z", "(?P<n>a)b?"]


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
    | st.builds(
        lambda attr, pattern: {"attr": attr, "op": "regex", "value": pattern},
        paths,
        st.sampled_from(RE2_PATTERNS),
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


def nested(leaf: object, levels: int) -> object:
    for _ in range(levels):
        leaf = {"and": [leaf]}
    return leaf


deep_documents = st.builds(
    nested, leaf_conditions, st.integers(min_value=12, max_value=17)
) | st.builds(
    lambda attr, value, levels: {"attr": attr, "value": nested_list(value, levels)},
    paths,
    json_values,
    st.integers(min_value=28, max_value=34),
)


def nested_list(value: object, levels: int) -> object:
    for _ in range(levels):
        value = [value]
    return value
