"""Per-pod overrides of the sidecar, the injection settings, and resource quantities.

An override that cannot work must be refused with a message naming the annotation to fix: the
webhook returns it to whoever applied the Pod (or its Deployment's ReplicaSet events).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from routemesh_operator.injection import (
    InjectionContext,
    InjectionError,
    InjectionSettings,
    build_patch,
    resolve_options,
)
from routemesh_operator.injection.quantities import is_quantity, quantity_value

pytestmark = pytest.mark.timeout(10)

SETTINGS = InjectionSettings()


def pod(annotations: dict[str, Any] | None = None, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app", "image": "example/chat:1", **container}]},
    }


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"routemesh.dev/sidecar-port": "0"}, "routemesh.dev/sidecar-port='0' must be a port"),
        ({"routemesh.dev/sidecar-port": "65536"}, "from 1 to 65535"),
        ({"routemesh.dev/sidecar-port": "http"}, "sidecar-port='http'"),
        ({"routemesh.dev/sidecar-port": "+80"}, "sidecar-port='+80'"),
        ({"routemesh.dev/sidecar-port": " 80"}, "sidecar-port=' 80'"),
        ({"routemesh.dev/sidecar-admin-port": "-1"}, "sidecar-admin-port='-1'"),
        (
            {"routemesh.dev/sidecar-port": "15000"},
            "the sidecar's port and admin port are both 15000",
        ),
        (
            {"routemesh.dev/sidecar-port": "9000", "routemesh.dev/sidecar-admin-port": "9000"},
            "both 9000",
        ),
        (
            {"routemesh.dev/sidecar-log-level": "verbose"},
            "sidecar-log-level='verbose' must be one of debug, info, warning, error",
        ),
        ({"routemesh.dev/sidecar-cpu-request": "1 core"}, "'1 core' is not a Kubernetes quantity"),
        ({"routemesh.dev/sidecar-memory-request": "lots"}, "sidecar-memory-request='lots'"),
        ({"routemesh.dev/sidecar-cpu-limit": "-1"}, "sidecar-cpu-limit='-1'"),
        ({"routemesh.dev/sidecar-memory-limit": "1GB"}, "sidecar-memory-limit='1GB'"),
        ({"routemesh.dev/sidecar-memory-limit": ""}, "sidecar-memory-limit=''"),
        (
            {"routemesh.dev/sidecar-memory-request": "1Gi"},
            "memory request 1Gi is above its limit 512Mi",
        ),
        (
            {"routemesh.dev/sidecar-cpu-request": "2", "routemesh.dev/sidecar-cpu-limit": "1500m"},
            "cpu request 2 is above its limit 1500m",
        ),
        ({"routemesh.dev/sidecar-memory-limit": "0"}, "memory limit must be above zero"),
    ],
)
def test_an_override_that_cannot_work_is_refused_naming_what_to_fix(annotations, message):
    with pytest.raises(InjectionError) as caught:
        build_patch(pod(annotations), InjectionContext("apps"), SETTINGS)
    assert message in str(caught.value)
    assert str(caught.value).startswith("routemesh sidecar injection: ")


def test_every_problem_is_reported_at_once():
    annotations = {
        "routemesh.dev/sidecar-port": "70000",
        "routemesh.dev/sidecar-log-level": "loud",
        "routemesh.dev/sidecar-memory-request": "1Gi",
    }
    with pytest.raises(InjectionError) as caught:
        resolve_options(pod(annotations), SETTINGS)
    assert len(caught.value.problems) == 3
    assert "memory request 1Gi is above its limit 512Mi" in caught.value.problems[2]
    annotations["routemesh.dev/sidecar-cpu-request"] = "many"
    with pytest.raises(InjectionError) as caught:
        resolve_options(pod(annotations), SETTINGS)
    # A misspelt quantity is reported; comparing the others waits until it is fixed.
    assert len(caught.value.problems) == 3
    assert "'many' is not a Kubernetes quantity" in caught.value.problems[2]


def test_a_port_an_app_container_declares_is_refused_with_the_annotation_to_set():
    declares = pod(ports=[{"containerPort": 4000}])
    with pytest.raises(
        InjectionError,
        match=r"port 4000 is taken by container 'app'; set "
        r"routemesh\.dev/sidecar-port to a free port",
    ):
        resolve_options(declares, SETTINGS)
    moved = pod({"routemesh.dev/sidecar-port": "4001"}, ports=[{"containerPort": 4000}])
    assert resolve_options(moved, SETTINGS).listen_port == 4001


def test_an_init_containers_port_clashes_too_and_a_udp_port_does_not():
    init = pod()
    init["spec"]["initContainers"] = [
        {"name": "proxy", "image": "p", "ports": [{"containerPort": 15000}]}
    ]
    with pytest.raises(InjectionError, match="port 15000 is taken by container 'proxy'"):
        resolve_options(init, SETTINGS)
    udp = pod(ports=[{"containerPort": 4000, "protocol": "UDP"}])
    assert resolve_options(udp, SETTINGS).listen_port == 4000


def test_without_annotations_the_settings_apply():
    options = resolve_options(pod(), InjectionSettings(listen_port=4100, log_level="warning"))
    assert (options.listen_port, options.admin_port, options.log_level) == (4100, 15000, "warning")
    assert dict(options.requests) == {"cpu": "100m", "memory": "128Mi"}
    assert dict(options.limits) == {"memory": "512Mi"}


@pytest.mark.parametrize(
    "fields",
    [
        {"listen_port": 15000},
        {"listen_port": 0},
        {"admin_port": 70000},
        {"cpu_request": "a lot"},
        {"memory_request": "1Gi"},  # above the default 512Mi limit
        {"log_level": "trace"},
        {"token_expiration_seconds": 60},
        {"sidecar_image": ""},
        {"unknown": 1},
    ],
)
def test_settings_that_cannot_work_are_refused(fields):
    with pytest.raises(ValidationError):
        InjectionSettings(**fields)


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        SETTINGS.listen_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("0.5", Decimal("0.5")),
        (".5", Decimal("0.5")),
        ("2", Decimal(2)),
        ("128Mi", Decimal(128 * 1024**2)),
        ("1.5Gi", Decimal(3 * 1024**3 // 2)),
        ("1G", Decimal(10**9)),
        ("1k", Decimal(1000)),
        ("1e3", Decimal(1000)),
        ("5E-1", Decimal("0.5")),
        ("250u", Decimal("0.00025")),
        ("0", Decimal(0)),
    ],
)
def test_quantities_parse_to_base_units(text, value):
    assert is_quantity(text)
    assert quantity_value(text) == value


@pytest.mark.parametrize(
    "text", ["", "-1", "1.2.3", "1 Gi", "1gi", "Mi", "1KiB", "1K", "1m2", "e3"]
)
def test_misspelt_quantities_are_refused(text):
    assert not is_quantity(text)
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        quantity_value(text)
