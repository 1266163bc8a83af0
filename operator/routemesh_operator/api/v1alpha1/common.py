"""Types shared by RoutingPolicy and ModelBackend: durations, prices, selectors, references, status.

The kind modules build on these. Each type carries the OpenAPI constraints the CRD needs (pattern,
bounds, list semantics), because the CRD YAML is generated from these models. Nothing here does I/O
or applies defaults: an absent field stays absent, and the compiler decides what absence means.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "routemesh.dev"
API_VERSION = "v1alpha1"

# A Go-style duration limited to the units that make sense for request handling: "250ms", "2s",
# "1m30s". CEL's duration() parses the same syntax, so rules can compare two durations.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Money and other exact decimals are strings, as Kubernetes APIs avoid floats in specs.
DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Decimal = Annotated[str, Field(pattern=DECIMAL_PATTERN, max_length=32)]
Percent = Annotated[int, Field(ge=0, le=100)]
Name = Annotated[str, Field(min_length=1, max_length=253)]
ShortString = Annotated[str, Field(min_length=1, max_length=256)]


def parse_duration(value: str) -> timedelta:
    """Turn a schema-valid duration string into a timedelta."""
    seconds = sum(
        float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value)
    )
    return timedelta(seconds=seconds)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """An `x-kubernetes-validations` entry: a CEL rule and the message shown when it fails."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """The `json_schema_extra` that attaches CEL rules to a model's schema."""
    return {"x-kubernetes-validations": list(rules)}


def map_list(key: str = "name") -> dict[str, Any]:
    """Schema extras for a list keyed by one field: the API server refuses duplicate keys."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


SET_LIST: dict[str, Any] = {"x-kubernetes-list-type": "set"}


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class LabelSelectorRequirement(ApiModel):
    """A label selector requirement: a key, an operator and values."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """The label key the selector applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: Annotated[list[ShortString], Field(max_length=64)] | None = None
    """The values for In and NotIn; must be empty for Exists and DoesNotExist."""


class LabelSelector(ApiModel):
    """A Kubernetes label selector. The empty selector `{}` selects every pod in the namespace."""

    match_labels: Annotated[dict[str, ShortString], Field(max_length=64)] | None = None
    """Labels a pod must carry, all of them, with exactly these values."""
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=32)] | None = None
    """Requirements a pod's labels must meet, all of them."""


class SecretKeyRef(ApiModel):
    """A key of a Secret in the same namespace. Credentials are referenced, never inline."""

    name: Name
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key within the Secret whose value is used."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One aspect of the resource's state, following the Kubernetes API conventions."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """The aspect, in CamelCase: Accepted, ResolvedRefs, Ready or Programmed."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """A CamelCase word saying why, for programs (for example BackendNotFound)."""
    message: Annotated[str, Field(max_length=32768)]
    """What happened and what to do about it, for people."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this condition was computed from."""
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    """When the status last changed (RFC 3339)."""


Conditions = Annotated[list[Condition], Field(max_length=8, json_schema_extra=map_list("type"))]
