"""Label selectors (Kubernetes' ``matchLabels`` / ``matchExpressions``) and host labels.

Used by the render stages that pick what applies to a host: a Fleet entry's
``selector`` (which stacks this host runs) and an Overlay's ``resources`` entries
and ``patches`` targets. Pure: no I/O.

Semantics follow Kubernetes (``apimachinery/pkg/labels``): every ``matchLabels``
pair and every expression must hold (AND); an empty selector matches everything.
``In``/``NotIn`` take a non-empty ``values`` list, ``Exists``/``DoesNotExist`` none.
``NotIn`` and ``DoesNotExist`` match a host that lacks the key.

Example::

    sel = Selector.model_validate({"matchLabels": {"role": "web"}})
    sel.matches({"role": "web", "env": "prod"})   # True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Kubernetes' label key: an optional DNS-subdomain prefix and a name of up to 63 chars.
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


class Requirement(BaseModel):
    """One ``matchExpressions`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=LABEL_KEY)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> Requirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs a non-empty values list")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        present = self.key in labels and labels[self.key] in self.values
        return present if self.operator == "In" else not present


class Selector(BaseModel):
    """A label selector; ``matches`` is true when every term holds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[Requirement, ...] = Field(default=(), alias="matchExpressions")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def __str__(self) -> str:
        terms = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for r in self.match_expressions:
            if r.operator == "Exists":
                terms.append(r.key)
            elif r.operator == "DoesNotExist":
                terms.append(f"!{r.key}")
            else:
                op = "in" if r.operator == "In" else "notin"
                terms.append(f"{r.key} {op} ({','.join(r.values)})")
        return ",".join(terms) or "(everything)"


def parse_labels(text: str) -> dict[str, str]:
    """``role=web,env=prod`` → a dict; raises ValueError naming the bad pair."""
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"label {pair!r} is not KEY=VALUE")
        out[key] = value
    return out
