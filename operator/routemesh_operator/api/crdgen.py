"""Generate the CustomResourceDefinitions in `crds/` from the pydantic API models.

`hack/verify.py` calls `render_crds()` to regenerate the YAML in memory and compare it with what
is checked in (or, with `--write`, to rewrite it). Tests call it for the golden test.

The output is a structural schema, as the API server requires: every `$ref` is inlined, every
optional field is a plain property (not an `anyOf` with null), and nothing is left that the API
server would reject or silently rewrite. The generator refuses models it cannot express instead of
emitting a schema that would mean something else: a property without a description, a default
value (the API server would write it into stored objects), or a union of two types.

It is pure: models in, text out. It does no file or network I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from routemesh_operator.api.v1alpha1 import KINDS, KindInfo
from routemesh_operator.api.v1alpha1.common import API_GROUP, API_VERSION

JSONSchema = dict[str, Any]

GENERATED_HEADER = (
    "# Generated from the pydantic models in operator/routemesh_operator/api/v1alpha1.\n"
    "# Do not edit: change the models and run `make generate`. `make verify` fails on drift.\n"
)

# Keys pydantic emits that a structural CRD schema must not carry, or that mean nothing to it.
_DROPPED_KEYS = frozenset({"title", "$defs"})
# The keys a generated schema may hold, in the order they are written: what a field is first,
# then its bounds, then what it contains, then the Kubernetes extensions.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
)
_KEPT_KEYS = frozenset(_KEY_ORDER)


class _Dumper(yaml.SafeDumper):
    """Writes shared subschemas out in full: YAML anchors would make the CRDs hard to read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class SchemaError(ValueError):
    """The models use a construct the CRD schema cannot express faithfully."""


class _Converter:
    """Turns one pydantic JSON schema, with its `$defs`, into a structural OpenAPI v3 schema."""

    def __init__(self, definitions: Mapping[str, JSONSchema]) -> None:
        self._definitions = definitions

    def convert(self, schema: JSONSchema, path: str) -> JSONSchema:
        schema = self._resolve(schema, path)
        if "default" in schema and schema["default"] is not None:
            raise SchemaError(
                f"{path}: has default {schema['default']!r}; the API must not default fields "
                "(the API server would write the default into stored objects)"
            )
        out: JSONSchema = {}
        for key, value in schema.items():
            if key in _DROPPED_KEYS or key == "default":
                continue
            if key == "const":
                out["enum"] = [value]
            elif key == "properties":
                out["properties"] = {
                    name: self._property(sub, f"{path}.{name}") for name, sub in value.items()
                }
            elif key == "items":
                out["items"] = self.convert(value, f"{path}[]")
            elif key == "additionalProperties":
                # `false` comes from extra="forbid": the API server refuses unknown fields by
                # itself (strict field validation), and structural schemas do not allow `false`.
                if value is not False:
                    out["additionalProperties"] = self.convert(value, f"{path}.*")
            elif key in _KEPT_KEYS:
                out[key] = value
            else:
                raise SchemaError(f"{path}: the CRD generator does not handle {key!r}")
        if "type" not in out:
            raise SchemaError(f"{path}: no type (a union or an untyped field?)")
        if "description" in out:
            out["description"] = _one_paragraph(out["description"])
        return {key: out[key] for key in _KEY_ORDER if key in out}

    def _property(self, schema: JSONSchema, path: str) -> JSONSchema:
        """A property: inlined, with the field's own description taking precedence."""
        description = schema.get("description")
        out = self.convert(schema, path)
        if description:
            out["description"] = _one_paragraph(description)
        if not out.get("description"):
            raise SchemaError(f"{path}: no description; `kubectl explain` would show nothing")
        return {key: out[key] for key in _KEY_ORDER if key in out}

    def _resolve(self, schema: JSONSchema, path: str) -> JSONSchema:
        """Inline a `$ref` and collapse `X | None` to `X`; absence is how the API says None."""
        schema = dict(schema)
        if "anyOf" in schema:
            branches = [b for b in schema.pop("anyOf") if b.get("type") != "null"]
            if len(branches) != 1:
                raise SchemaError(f"{path}: unions of several types cannot be structural")
            schema = {**self._resolve(branches[0], path), **schema}
        if "$ref" in schema:
            name = schema.pop("$ref").removeprefix("#/$defs/")
            schema = {**self._resolve(self._definitions[name], path), **schema}
        return schema


def _one_paragraph(text: str) -> str:
    """Docstrings wrap at the source's line length; `kubectl explain` wraps by itself."""
    return " ".join(text.split())


def openapi_schema(model: type[Any], path: str) -> JSONSchema:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _Converter(raw.get("$defs", {})).convert(raw, path)


def crd(kind: KindInfo) -> JSONSchema:
    """The CustomResourceDefinition of one kind."""
    root: JSONSchema = {
        "description": kind.description,
        "type": "object",
        "properties": {
            "apiVersion": {
                "description": "The versioned schema of this object: routemesh.dev/v1alpha1.",
                "type": "string",
            },
            "kind": {"description": f"The kind of this object: {kind.kind}.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(kind.spec, "spec"),
            "status": openapi_schema(kind.status, "status"),
        },
        "required": ["spec"],
    }
    columns = [
        {
            "name": column.name,
            "type": column.type,
            "jsonPath": column.json_path,
            "description": column.description,
            **({"priority": column.priority} if column.priority else {}),
        }
        for column in kind.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["routemesh"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_filename(kind: KindInfo) -> str:
    """The file in `crds/` that holds the kind's CRD, named as controller-gen names them."""
    return f"{API_GROUP}_{kind.plural}.yaml"


def render_crds() -> dict[str, str]:
    """Every CRD as YAML text, keyed by its file name in `crds/`."""
    return {
        crd_filename(kind): GENERATED_HEADER
        + yaml.dump(crd(kind), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
        for kind in KINDS
    }
