"""The injection patch, applied to Pods and checked field by field.

Each case applies `build_patch`'s operations with a real RFC 6902 implementation (jsonpatch) and
reads the resulting Pod, as the API server would store it. The sidecar's environment is resolved
the way the kubelet does (fieldRef, then `$(VAR)`) and parsed by the sidecar's own settings
model, and every file path in it must be a file one of its volumes puts there.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path, PurePosixPath
from typing import Any

import jsonpatch
import pytest
import yaml

from routemesh_operator import conventions
from routemesh_operator.api.chart import Sidecar as ChartSidecar
from routemesh_operator.api.v1alpha1 import ModelBackend, RoutingPolicy
from routemesh_operator.compiler.compile import compile_namespace
from routemesh_operator.compiler.inputs import Snapshot
from routemesh_operator.injection import (
    InjectionContext,
    InjectionSettings,
    SecretKey,
    build_patch,
    decide,
)
from routemesh_operator.injection.patch import pointer
from routemesh_sidecar.settings import SidecarSettings

pytestmark = pytest.mark.timeout(10)

EXAMPLES = Path(__file__).parents[3] / "examples"
NAMESPACE = "apps"
LABELLED = {"routemesh.dev/inject": "enabled"}
SETTINGS = InjectionSettings()
SECRETS = frozenset({SecretKey("openai-api-key", "api-key"), SecretKey("anthropic", "token")})
CONTEXT = InjectionContext(NAMESPACE, policy="chat-routing", secrets=SECRETS)
# What the kubelet fills the sidecar's fieldRefs with.
FIELDS = {"metadata.name": "chat-7d9f", "metadata.namespace": NAMESPACE, "spec.nodeName": "node-a"}
BASE_URLS = {
    "OPENAI_BASE_URL": "http://127.0.0.1:4000/v1",
    "OPENAI_API_BASE": "http://127.0.0.1:4000/v1",
    "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
}


def app(name: str = "app", env: list[dict[str, Any]] | None = None, **fields: Any) -> dict:
    container: dict[str, Any] = {"name": name, "image": f"example/{name}:1", **fields}
    if env is not None:
        container["env"] = env
    return container


def pod(
    *containers: dict[str, Any],
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "chat-7d9f", "namespace": NAMESPACE}
    if annotations is not None:
        metadata["annotations"] = annotations
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": list(containers) or [app()], **spec},
    }


def inject(
    original: dict[str, Any],
    context: InjectionContext = CONTEXT,
    settings: InjectionSettings = SETTINGS,
) -> dict[str, Any]:
    """The Pod as stored after admission; the original is never modified."""
    before = copy.deepcopy(original)
    ops = build_patch(original, context, settings)
    assert original == before, "build_patch must not modify its input"
    assert {op["op"] for op in ops} <= {"add"}, "injection only adds"
    patched: dict[str, Any] = jsonpatch.apply_patch(original, ops)
    return patched


def sidecar_of(patched: dict[str, Any]) -> dict[str, Any]:
    (sidecar,) = [
        c for c in patched["spec"].get("initContainers", []) if c["name"] == "routemesh-sidecar"
    ]
    return sidecar


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {
        variable["name"]: variable.get("value", variable.get("valueFrom"))
        for variable in container.get("env", [])
    }


def resolved_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet gives the container: fieldRefs, then `$(VAR)` expansion."""
    resolved: dict[str, str] = {}
    for variable in container["env"]:
        if "valueFrom" in variable:
            resolved[variable["name"]] = FIELDS[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            resolved[variable["name"]] = expand(variable["value"], resolved)
    return resolved


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' expansion: `$(NAME)` of a variable defined earlier, `$$` for a literal `$`."""
    out, index = [], 0
    while index < len(value):
        if value.startswith("$$", index):
            out.append("$")
            index += 2
            continue
        end = value.find(")", index)
        if value.startswith("$(", index) and end != -1 and value[index + 2 : end] in defined:
            out.append(defined[value[index + 2 : end]])
            index = end + 1
            continue
        out.append(value[index])
        index += 1
    return "".join(out)


def sidecar_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> SidecarSettings:
    """SidecarSettings as the sidecar builds them from exactly this environment."""
    for name in list(os.environ):
        if name.startswith(("ROUTEMESH_SIDECAR_", "OTEL_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return SidecarSettings()


def volume_files(patched: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Every file the container's read-only volumes put in it: path -> volume name."""
    volumes = {volume["name"]: volume for volume in patched["spec"].get("volumes", [])}
    files = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        for path in projected_paths(volume):
            files[str(PurePosixPath(mount["mountPath"]) / path)] = mount["name"]
    return files


def projected_paths(volume: dict[str, Any]) -> list[str]:
    sources = volume.get("projected", {}).get("sources", [volume])
    paths = []
    for source in sources:
        if "serviceAccountToken" in source:
            paths.append(source["serviceAccountToken"]["path"])
        for kind in ("configMap", "secret", "downwardAPI"):
            paths.extend(item["path"] for item in source.get(kind, {}).get("items", []))
    return paths


def writable_dirs(patched: dict[str, Any], container: dict[str, Any]) -> set[str]:
    volumes = {volume["name"]: volume for volume in patched["spec"].get("volumes", [])}
    return {
        mount["mountPath"]
        for mount in container.get("volumeMounts", [])
        if "emptyDir" in volumes[mount["name"]] and not mount.get("readOnly")
    }


def routemesh_mounts(container: dict[str, Any]) -> list[str]:
    return [
        m["name"] for m in container.get("volumeMounts", []) if m["name"].startswith("routemesh-")
    ]


# ---------------------------------------------------------------- the sidecar container


def test_the_sidecar_is_a_native_sidecar_and_the_only_init_container_when_there_were_none():
    ops = build_patch(pod(), CONTEXT, SETTINGS)
    assert [op["path"] for op in ops if "initContainers" in op["path"]] == ["/spec/initContainers"]
    patched = inject(pod())
    (sidecar,) = patched["spec"]["initContainers"]
    assert sidecar["name"] == "routemesh-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SETTINGS.sidecar_image
    assert sidecar["imagePullPolicy"] == "IfNotPresent"
    assert sidecar["command"] == ["routemesh-sidecar"]
    assert sidecar["ports"] == [
        {"name": "routemesh-admin", "containerPort": 15000, "protocol": "TCP"}
    ]
    assert [c["name"] for c in patched["spec"]["containers"]] == ["app"]


def test_the_sidecar_goes_first_among_existing_init_containers():
    migrate = {"name": "migrate", "image": "example/migrate:1"}
    warmup = {"name": "warmup", "image": "example/warmup:1"}
    patched = inject(pod(initContainers=[migrate, warmup]))
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["routemesh-sidecar", "migrate", "warmup"]
    # The other init containers start after it, so they get nothing from injection either.
    assert patched["spec"]["initContainers"][1:] == [migrate, warmup]


def test_the_sidecar_runs_as_non_root_with_a_read_only_root_and_no_capabilities():
    security = sidecar_of(inject(pod()))["securityContext"]
    assert security == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_the_sidecar_gets_default_resources_and_probes_on_its_admin_port():
    sidecar = sidecar_of(inject(pod()))
    assert sidecar["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert sidecar["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": 15000,
        "scheme": "HTTP",
    }
    assert sidecar["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": 15000,
        "scheme": "HTTP",
    }
    assert sidecar["startupProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": 15000,
        "scheme": "HTTP",
    }
    # The app waits for the startup probe; it must give a slow image pull's start a minute.
    startup = sidecar["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_resource_settings_of_none_set_nothing():
    settings = InjectionSettings(cpu_request=None, memory_request=None, memory_limit=None)
    assert sidecar_of(inject(pod(), settings=settings))["resources"] == {}
    settings = InjectionSettings(cpu_limit="2", memory_limit=None)
    resources = sidecar_of(inject(pod(), settings=settings))["resources"]
    assert resources == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2"}}


# ---------------------------------------------------------------- the app containers


def test_app_containers_with_and_without_env_get_the_base_urls():
    with_env = app("chat", env=[{"name": "LOG", "value": "1"}])
    without_env = app("worker")
    null_env = app("batch", env=None)
    null_env["env"] = None
    empty_env = app("cron", env=[])
    patched = inject(pod(with_env, without_env, null_env, empty_env))
    chat, worker, batch, cron = patched["spec"]["containers"]
    assert chat["env"] == [{"name": "LOG", "value": "1"}] + [
        {"name": name, "value": value} for name, value in BASE_URLS.items()
    ]
    for container in (worker, batch, cron):
        assert env_of(container) == BASE_URLS


@pytest.mark.parametrize(
    "own",
    [
        {"name": "OPENAI_BASE_URL", "value": "https://gateway.example/v1"},
        {"name": "OPENAI_BASE_URL", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "u"}}},
    ],
    ids=["value", "valueFrom"],
)
def test_a_container_that_sets_its_own_base_url_keeps_it_and_gets_only_the_others(own):
    patched = inject(pod(app("chat", env=[own]), app("other")))
    chat, other = patched["spec"]["containers"]
    assert chat["env"][0] == own
    assert [v["name"] for v in chat["env"]] == [
        "OPENAI_BASE_URL",
        "OPENAI_API_BASE",
        "ANTHROPIC_BASE_URL",
    ]
    assert env_of(chat)["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4000"
    # Per container: its neighbour still gets all three.
    assert env_of(other) == BASE_URLS


def test_a_container_that_sets_every_base_url_is_not_touched():
    own = [{"name": name, "value": "http://elsewhere"} for name in BASE_URLS]
    original = pod(app("chat", env=own))
    ops = build_patch(original, CONTEXT, SETTINGS)
    assert not [op for op in ops if op["path"].startswith("/spec/containers")]
    assert inject(original)["spec"]["containers"] == original["spec"]["containers"]


def test_init_containers_of_the_app_get_no_base_urls():
    migrate = app("migrate")
    patched = inject(pod(initContainers=[migrate]))
    assert patched["spec"]["initContainers"][1] == migrate


# ---------------------------------------------------------------- credentials stay in the sidecar


def test_the_app_container_never_sees_the_provider_secret():
    own_mount = {"name": "data", "mountPath": "/data"}
    original = pod(
        app("chat", env=[{"name": "LOG", "value": "1"}], volumeMounts=[own_mount]),
        app("worker"),
        initContainers=[app("migrate")],
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    patched = inject(original)
    spec = patched["spec"]
    others = [c for c in spec["initContainers"] if c["name"] != "routemesh-sidecar"]
    for container in spec["containers"] + others:
        assert routemesh_mounts(container) == [], container["name"]
        for variable in container.get("env", []):
            assert "secretKeyRef" not in variable.get("valueFrom", {}), container["name"]
        assert "envFrom" not in container
    assert spec["containers"][0]["volumeMounts"] == [own_mount]
    # The Secrets appear in exactly one volume, and only the sidecar mounts it.
    holders = [v["name"] for v in spec["volumes"] if "openai-api-key" in str(v)]
    assert holders == ["routemesh-credentials"]
    assert "routemesh-credentials" in routemesh_mounts(sidecar_of(patched))
    credentials = next(v for v in spec["volumes"] if v["name"] == "routemesh-credentials")
    assert credentials == {
        "name": "routemesh-credentials",
        "projected": {
            "sources": [
                {
                    "secret": {
                        "name": "anthropic",
                        "items": [{"key": "token", "path": "anthropic/token"}],
                        "optional": True,
                    }
                },
                {
                    "secret": {
                        "name": "openai-api-key",
                        "items": [{"key": "api-key", "path": "openai-api-key/api-key"}],
                        "optional": True,
                    }
                },
            ]
        },
    }
    mount = next(
        m for m in sidecar_of(patched)["volumeMounts"] if m["name"] == "routemesh-credentials"
    )
    assert mount == {
        "name": "routemesh-credentials",
        "mountPath": "/var/run/routemesh/credentials",
        "readOnly": True,
    }
    # Nor does the sidecar carry a Secret in its environment, where the app's debugger could.
    assert "secretKeyRef" not in str(sidecar_of(patched)["env"])


def test_two_keys_of_one_secret_are_one_source():
    secrets = frozenset({SecretKey("keys", "openai"), SecretKey("keys", "anthropic")})
    patched = inject(pod(), context=InjectionContext(NAMESPACE, "p", secrets))
    credentials = next(
        v for v in patched["spec"]["volumes"] if v["name"] == "routemesh-credentials"
    )
    assert credentials["projected"]["sources"] == [
        {
            "secret": {
                "name": "keys",
                "items": [
                    {"key": "anthropic", "path": "keys/anthropic"},
                    {"key": "openai", "path": "keys/openai"},
                ],
                "optional": True,
            }
        }
    ]


def test_every_credentials_file_a_compiled_route_table_names_is_projected_into_the_sidecar():
    docs = [
        doc
        for doc in yaml.safe_load_all((EXAMPLES / "multi-provider-failover.yaml").read_text())
        if doc
    ]
    for index, doc in enumerate(docs):
        doc["metadata"].update(generation=1, creationTimestamp=f"2026-11-30T00:00:{index:02d}Z")
    backends = tuple(ModelBackend.model_validate(d) for d in docs if d["kind"] == "ModelBackend")
    (policy,) = [RoutingPolicy.model_validate(d) for d in docs if d["kind"] == "RoutingPolicy"]
    secrets = frozenset(
        SecretKey(b.spec.credentials.secret_ref.name, b.spec.credentials.secret_ref.key)
        for b in backends
        if b.spec.credentials
    )
    snapshot = Snapshot(
        namespace=NAMESPACE,
        policies=(policy,),
        backends=backends,
        secret_keys=frozenset((s.name, s.key) for s in secrets),
    )
    (outcome,) = compile_namespace(snapshot).policies.values()
    assert outcome.table is not None
    files = {
        str(backend.credentials.file)
        for backend in outcome.table.backends.values()
        if backend.credentials is not None
    }
    assert len(files) == 3
    patched = inject(
        pod(), context=InjectionContext(NAMESPACE, str(policy.metadata["name"]), secrets)
    )
    projected = volume_files(patched, sidecar_of(patched))
    assert {path: projected.get(path) for path in files} == dict.fromkeys(
        files, "routemesh-credentials"
    )


def test_a_policy_without_credentials_gets_no_credentials_volume():
    patched = inject(pod(), context=InjectionContext(NAMESPACE, "local-only"))
    assert "routemesh-credentials" not in [v["name"] for v in patched["spec"]["volumes"]]
    assert "routemesh-credentials" not in routemesh_mounts(sidecar_of(patched))


# ---------------------------------------------------------------- the sidecar's files and settings


def test_the_sidecars_settings_parse_and_point_at_the_files_its_volumes_put_there(monkeypatch):
    patched = inject(pod())
    sidecar = sidecar_of(patched)
    env = resolved_env(sidecar)
    assert not [value for value in env.values() if "$(" in value], "every reference expands"
    settings = sidecar_settings(env, monkeypatch)
    files = volume_files(patched, sidecar)
    assert files[str(settings.discovery_token_path)] == "routemesh-discovery"
    assert files[str(settings.pod_labels_path)] == "routemesh-podinfo"
    assert files[str(settings.route_table_path)] == "routemesh-route-table"
    assert settings.last_good_path is not None
    assert str(settings.last_good_path.parent) in writable_dirs(patched, sidecar)
    assert settings.discovery_ca_path is None
    assert settings.discovery_url == SETTINGS.discovery_url
    assert (settings.pod_name, settings.pod_namespace) == ("chat-7d9f", NAMESPACE)
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 4000)
    assert (settings.admin_host, settings.admin_port) == (SETTINGS.admin_host, 15000)
    assert settings.log_level == "info"
    assert settings.otel_service_name == "routemesh-sidecar"
    assert settings.traces_url is None


def test_every_routemesh_variable_is_one_the_sidecar_reads(monkeypatch):
    # The sidecar's settings ignore an unknown ROUTEMESH_SIDECAR_* variable; a misspelt one
    # would silently leave the default in place.
    env = resolved_env(sidecar_of(inject(pod())))
    fields = {"ROUTEMESH_SIDECAR_" + name.upper() for name in SidecarSettings.model_fields}
    ours = {name for name in env if name.startswith("ROUTEMESH_SIDECAR_")}
    assert ours - fields == {"ROUTEMESH_SIDECAR_NODE_NAME"}  # only for the OTel attributes
    settings = sidecar_settings(env, monkeypatch)
    for name in ours & fields:
        field = name.removeprefix("ROUTEMESH_SIDECAR_").lower()
        assert str(getattr(settings, field)) == env[name], name


def test_otel_settings_name_the_pod_namespace_and_node(monkeypatch):
    settings = InjectionSettings(otlp_endpoint="http://otel-collector.observability:4318")
    sidecar = sidecar_of(inject(pod(), settings=settings))
    env = resolved_env(sidecar)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["OTEL_SERVICE_NAME"] == "routemesh-sidecar"
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.pod.name=chat-7d9f,k8s.namespace.name=apps,k8s.node.name=node-a,"
        "k8s.container.name=routemesh-sidecar"
    )
    raw = env_of(sidecar)
    assert raw["ROUTEMESH_SIDECAR_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert raw["ROUTEMESH_SIDECAR_POD_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert raw["ROUTEMESH_SIDECAR_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert sidecar_settings(env, monkeypatch).traces_url == (
        "http://otel-collector.observability:4318/v1/traces"
    )


def test_the_export_settings_reach_the_sidecar_as_the_otel_variables(monkeypatch):
    settings = InjectionSettings(
        otlp_endpoint="http://otel-collector.observability:4318",
        otlp_compression="gzip",
        otlp_timeout_ms=2500,
        otlp_batch_spans=256,
        otlp_schedule_delay_ms=200,
    )
    env = resolved_env(sidecar_of(inject(pod(), settings=settings)))
    assert env["OTEL_EXPORTER_OTLP_COMPRESSION"] == "gzip"
    assert env["OTEL_EXPORTER_OTLP_TIMEOUT"] == "2500"
    assert env["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] == "256"
    assert env["OTEL_BSP_SCHEDULE_DELAY"] == "200"
    assert env["OTEL_BSP_MAX_QUEUE_SIZE"] == "8192"
    sidecar = sidecar_settings(env, monkeypatch)
    assert (sidecar.otlp_compression, sidecar.export_timeout_seconds) == ("gzip", 2.5)
    assert (sidecar.otlp_batch_spans, sidecar.otlp_schedule_delay_ms) == (256, 200)
    assert sidecar.otlp_max_queued_spans == 8192


def test_the_export_headers_come_from_an_optional_secret_never_written_into_the_pod(monkeypatch):
    settings = InjectionSettings(
        otlp_endpoint="https://otlp.example.com", otlp_headers_secret="otlp-auth"
    )
    sidecar = sidecar_of(inject(pod(), settings=settings))
    [headers] = [e for e in sidecar["env"] if e["name"] == "OTEL_EXPORTER_OTLP_HEADERS"]
    assert "value" not in headers, "the API key stays in the Secret"
    assert headers["valueFrom"] == {
        "secretKeyRef": {"name": "otlp-auth", "key": "headers", "optional": True}
    }
    # What the sidecar makes of the Secret's value once the kubelet has resolved it.
    env = resolved_env({"env": [e for e in sidecar["env"] if e is not headers]})
    env["OTEL_EXPORTER_OTLP_HEADERS"] = "x-api-key=s3cret,x-tenant=shop%20one"
    parsed = sidecar_settings(env, monkeypatch).otlp_header_map()
    assert parsed == {"x-api-key": "s3cret", "x-tenant": "shop one"}


def test_the_headers_secret_key_is_configurable():
    settings = InjectionSettings(
        otlp_endpoint="https://otlp.example.com",
        otlp_headers_secret="collector",
        otlp_headers_secret_key="otlp-headers",
    )
    env = env_of(sidecar_of(inject(pod(), settings=settings)))
    assert env["OTEL_EXPORTER_OTLP_HEADERS"]["secretKeyRef"]["key"] == "otlp-headers"


def test_without_a_headers_secret_no_headers_are_set():
    settings = InjectionSettings(otlp_endpoint="https://otlp.example.com")
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env_of(sidecar_of(inject(pod(), settings=settings)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"otlp_headers_secret": "otlp-auth"}, r"set sidecar\.otlpEndpoint"),
        (
            {"otlp_endpoint": "http://c:4318", "otlp_headers_secret": "Not_A_Name"},
            "should match pattern",
        ),
        (
            {
                "otlp_endpoint": "http://c:4318",
                "otlp_headers_secret": "a",
                "otlp_headers_secret_key": "a/b",
            },
            "should match pattern",
        ),
    ],
)
def test_a_headers_secret_that_could_never_work_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        InjectionSettings(**fields)


def test_a_span_batch_larger_than_the_queue_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"set sidecar\.otlpMaxQueuedSpans at least as high"):
        InjectionSettings(otlp_batch_spans=4096, otlp_max_queued_spans=1024)


def test_without_a_collector_no_endpoint_is_set():
    env = env_of(sidecar_of(inject(pod())))
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env
    assert "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" not in env  # nothing to tune without an export
    assert "OTEL_RESOURCE_ATTRIBUTES" in env


def test_the_token_is_projected_for_the_routemesh_audience_and_the_sidecar_alone():
    patched = inject(pod(app("chat"), app("worker")))
    discovery = next(v for v in patched["spec"]["volumes"] if v["name"] == "routemesh-discovery")
    assert discovery == {
        "name": "routemesh-discovery",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "routemesh",
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                }
            ]
        },
    }
    for container in patched["spec"]["containers"]:
        assert "volumeMounts" not in container


def test_a_ca_configmap_is_projected_next_to_the_token(monkeypatch):
    settings = InjectionSettings(discovery_ca_configmap="routemesh-ca", token_audience="rm")
    patched = inject(pod(), settings=settings)
    sidecar = sidecar_of(patched)
    discovery = next(v for v in patched["spec"]["volumes"] if v["name"] == "routemesh-discovery")
    sources = discovery["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["audience"] == "rm"
    assert sources[1] == {
        "configMap": {
            "name": "routemesh-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
            "optional": True,
        }
    }
    parsed = sidecar_settings(resolved_env(sidecar), monkeypatch)
    assert volume_files(patched, sidecar)[str(parsed.discovery_ca_path)] == "routemesh-discovery"


def test_the_configmap_fallback_is_the_one_distribution_writes():
    patched = inject(pod())
    table = next(v for v in patched["spec"]["volumes"] if v["name"] == "routemesh-route-table")
    assert table == {
        "name": "routemesh-route-table",
        "configMap": {
            "name": conventions.configmap_name("chat-routing"),
            "items": [{"key": conventions.TABLE_KEY, "path": conventions.TABLE_KEY}],
            "optional": True,
        },
    }
    mount = next(
        m for m in sidecar_of(patched)["volumeMounts"] if m["name"] == "routemesh-route-table"
    )
    assert mount["readOnly"] is True


def test_no_policy_means_no_configmap_volume_and_no_route_table_path(monkeypatch):
    patched = inject(pod(), context=InjectionContext(NAMESPACE, None, SECRETS))
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert names == [
        "routemesh-discovery",
        "routemesh-podinfo",
        "routemesh-state",
        "routemesh-credentials",
    ]
    sidecar = sidecar_of(patched)
    assert "routemesh-route-table" not in routemesh_mounts(sidecar)
    settings = sidecar_settings(resolved_env(sidecar), monkeypatch)
    assert settings.route_table_path is None
    assert settings.discovery_url is not None


def test_the_labels_and_state_volumes():
    volumes = {v["name"]: v for v in inject(pod())["spec"]["volumes"]}
    assert volumes["routemesh-podinfo"] == {
        "name": "routemesh-podinfo",
        "downwardAPI": {
            "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
        },
    }
    assert volumes["routemesh-state"] == {
        "name": "routemesh-state",
        "emptyDir": {"sizeLimit": "32Mi"},
    }


def test_the_pods_own_volumes_are_kept_and_ours_appended():
    own = [{"name": "data", "emptyDir": {}}, {"name": "config", "configMap": {"name": "c"}}]
    ops = build_patch(pod(volumes=own), CONTEXT, SETTINGS)
    assert {op["path"] for op in ops if "volumes" in op["path"]} == {"/spec/volumes/-"}
    patched = inject(pod(volumes=own))
    names = [v["name"] for v in patched["spec"]["volumes"]]
    assert names[:2] == ["data", "config"]
    assert all(name.startswith("routemesh-") for name in names[2:])
    assert len(names) == len(set(names))


def test_a_pod_volume_named_like_ours_is_refused_not_overwritten():
    original = pod(volumes=[{"name": "routemesh-state", "emptyDir": {}}])
    with pytest.raises(ValueError, match="already has a volume named 'routemesh-state'"):
        build_patch(original, CONTEXT, SETTINGS)


# ---------------------------------------------------------------- the injected annotation and label

LABEL_PATH = "/metadata/labels/routemesh.dev~1injected"


@pytest.mark.parametrize(
    ("annotations", "paths"),
    [
        (None, ["/metadata/annotations", LABEL_PATH]),
        ({}, ["/metadata/annotations", LABEL_PATH]),
        ({"team": "chat"}, ["/metadata/annotations/routemesh.dev~1injected", LABEL_PATH]),
    ],
    ids=["absent", "empty", "present"],
)
def test_the_pod_is_marked_injected_without_touching_other_annotations(annotations, paths):
    original = pod(annotations=annotations, labels={"app": "chat"})
    ops = build_patch(original, CONTEXT, SETTINGS)
    assert [op["path"] for op in ops if op["path"].startswith("/metadata")] == paths
    patched = inject(original)
    assert patched["metadata"]["annotations"] == {
        **(annotations or {}),
        "routemesh.dev/injected": SETTINGS.version,
    }
    # The label is what a PodMonitor selects the sidecars by; the pod's own labels stay.
    assert patched["metadata"]["labels"] == {"app": "chat", "routemesh.dev/injected": "true"}


@pytest.mark.parametrize("labels", [None, {}], ids=["absent", "empty"])
def test_a_pod_without_labels_gets_the_whole_label_map(labels):
    original = pod(labels=labels)
    ops = build_patch(original, CONTEXT, SETTINGS)
    assert {
        "op": "add",
        "path": "/metadata/labels",
        "value": {"routemesh.dev/injected": "true"},
    } in ops
    assert inject(original)["metadata"]["labels"] == {"routemesh.dev/injected": "true"}


def test_pointer_escapes_tilde_and_slash():
    assert pointer("metadata", "annotations", "a~b/c") == "/metadata/annotations/a~0b~1c"
    assert pointer("spec", "containers", 2, "env") == "/spec/containers/2/env"


# ---------------------------------------------------------------- idempotency, end to end


CASES = {
    "labelled-namespace": pod(),
    "annotated-pod": pod(annotations={"routemesh.dev/inject": "enabled"}),
    "own-base-url": pod(app("chat", env=[{"name": "OPENAI_BASE_URL", "value": "http://x/v1"}])),
    "init-containers": pod(
        initContainers=[app("migrate")], volumes=[{"name": "d", "emptyDir": {}}]
    ),
    "overrides": pod(
        annotations={
            "routemesh.dev/sidecar-port": "8181",
            "routemesh.dev/sidecar-log-level": "debug",
            "routemesh.dev/sidecar-memory-limit": "1Gi",
        }
    ),
    "several-containers": pod(
        app("a"), app("b", env=[]), app("c", env=[{"name": "X", "value": "1"}])
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_injecting_an_injected_pod_changes_nothing(name):
    original = CASES[name]
    assert decide(original, NAMESPACE, LABELLED, SETTINGS).inject
    patched = inject(original)
    assert decide(patched, NAMESPACE, LABELLED, SETTINGS).reason == "already injected"
    assert build_patch(patched, CONTEXT, SETTINGS) == []
    # A reinvocation after another webhook dropped our annotation still sees the sidecar.
    stripped = copy.deepcopy(patched)
    del stripped["metadata"]["annotations"]["routemesh.dev/injected"]
    assert build_patch(stripped, CONTEXT, SETTINGS) == []
    assert not decide(stripped, NAMESPACE, LABELLED, SETTINGS).inject


def test_a_pod_annotated_as_injected_gets_no_patch():
    marked = pod(annotations={"routemesh.dev/injected": "0.0.9"})
    assert build_patch(marked, CONTEXT, SETTINGS) == []


def test_the_patch_is_deterministic():
    assert build_patch(CASES["init-containers"], CONTEXT, SETTINGS) == build_patch(
        copy.deepcopy(CASES["init-containers"]), CONTEXT, SETTINGS
    )


# ---------------------------------------------------------------- annotation overrides


def test_annotations_override_port_admin_port_and_log_level(monkeypatch):
    original = pod(
        annotations={
            "routemesh.dev/sidecar-port": "8181",
            "routemesh.dev/sidecar-admin-port": "9901",
            "routemesh.dev/sidecar-log-level": "DEBUG",
        }
    )
    patched = inject(original)
    sidecar = sidecar_of(patched)
    settings = sidecar_settings(resolved_env(sidecar), monkeypatch)
    assert (settings.listen_port, settings.admin_port, settings.log_level) == (8181, 9901, "debug")
    assert sidecar["ports"][0]["containerPort"] == 9901
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == 9901
    assert env_of(patched["spec"]["containers"][0]) == {
        "OPENAI_BASE_URL": "http://127.0.0.1:8181/v1",
        "OPENAI_API_BASE": "http://127.0.0.1:8181/v1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8181",
    }


def test_annotations_override_resources():
    original = pod(
        annotations={
            "routemesh.dev/sidecar-cpu-request": "250m",
            "routemesh.dev/sidecar-memory-request": "256Mi",
            "routemesh.dev/sidecar-cpu-limit": "1",
            "routemesh.dev/sidecar-memory-limit": "1Gi",
        }
    )
    assert sidecar_of(inject(original))["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }


def test_one_overridden_resource_keeps_the_other_defaults():
    original = pod(annotations={"routemesh.dev/sidecar-memory-request": "64Mi"})
    assert sidecar_of(inject(original))["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"memory": "512Mi"},
    }


@pytest.mark.parametrize(
    "field",
    ["otlp_compression", "otlp_batch_spans", "otlp_schedule_delay_ms", "otlp_max_queued_spans"],
)
def test_the_export_defaults_agree_in_the_chart_the_operator_and_the_sidecar(field):
    """The same default in the three layers that each hold one (none may import the next)."""
    chart = ChartSidecar.model_fields[field].default
    operator = InjectionSettings.model_fields[field].default
    sidecar = SidecarSettings.model_fields[field].default
    assert chart == operator == sidecar


def test_the_export_timeout_default_agrees_in_the_chart_the_operator_and_the_sidecar():
    chart_ms = ChartSidecar.model_fields["otlp_timeout_ms"].default
    operator_ms = InjectionSettings.model_fields["otlp_timeout_ms"].default
    sidecar_seconds = SidecarSettings.model_fields["otlp_timeout_seconds"].default
    assert chart_ms == operator_ms == sidecar_seconds * 1000
