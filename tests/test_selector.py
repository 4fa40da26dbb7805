"""Label selectors: every operator, AND semantics, validation, label parsing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from setpoint.render.selector import Selector, parse_labels

HOST = {"role": "web", "env": "prod", "setpoint.io/os": "linux"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"matchLabels": {"role": "web"}}, True),
        ({"matchLabels": {"role": "db"}}, False),
        ({"matchLabels": {"role": "web", "env": "staging"}}, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "setpoint.io/os", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"role": "web"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}],
            },
            False,
        ),
    ],
)
def test_selector_operators(selector: dict[str, object], expected: bool) -> None:
    assert Selector.model_validate(selector).matches(HOST) is expected


@pytest.mark.parametrize(
    "bad",
    [
        {"matchExpressions": [{"key": "env", "operator": "In"}]},
        {"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]},
        {"matchExpressions": [{"key": "env", "operator": "Gt", "values": ["1"]}]},
        {"matchLabel": {"role": "web"}},
        {"matchExpressions": [{"key": "bad key!", "operator": "Exists"}]},
    ],
)
def test_selector_rejects_malformed(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Selector.model_validate(bad)


def test_selector_str_names_every_term() -> None:
    sel = Selector.model_validate(
        {
            "matchLabels": {"role": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod"]},
                {"key": "zone", "operator": "DoesNotExist"},
            ],
        }
    )
    assert str(sel) == "role=web,env in (prod),!zone"


def test_parse_labels() -> None:
    assert parse_labels("role=web, env=prod,") == {"role": "web", "env": "prod"}
    with pytest.raises(ValueError, match="'role' is not KEY=VALUE"):
        parse_labels("role")
