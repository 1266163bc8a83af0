"""Kubernetes resource quantities: check their spelling and compare two of them.

The injection settings and the pod annotations that override the sidecar's resources are checked
here, so that a bad value is refused by the webhook with a message naming the annotation, rather
than by the API server with one naming a container the user never wrote. Pure: no I/O.
"""

from __future__ import annotations

import re
from decimal import Decimal

# The canonical quantity grammar of k8s.io/apimachinery (resource.Quantity), without a sign: a
# negative request or limit is never what anyone means.
QUANTITY = re.compile(
    r"^(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def is_quantity(text: str) -> bool:
    """Whether the API server would accept this text as a resource quantity."""
    return QUANTITY.match(text) is not None


def quantity_value(text: str) -> Decimal:
    """The quantity's value in base units (cores, bytes); ValueError when it is not one."""
    match = QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (such as 100m, 0.5, 128Mi, 1G)")
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    if suffix:  # an exponent: e3, E-2
        return number.scaleb(int(suffix[1:]))
    return number
