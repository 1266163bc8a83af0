"""The operator's settings: one documented pydantic model, read from `ROUTEMESH_OPERATOR_*`.

Built once at start and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from routemesh_operator.injection.settings import InjectionSettings


class OperatorSettings(BaseSettings):
    """Where the operator runs and what it watches."""

    model_config = SettingsConfigDict(env_prefix="ROUTEMESH_OPERATOR_", frozen=True)

    namespace: str = Field(
        default="routemesh-system",
        description="The operator's own namespace. Pods here are never injected.",
    )
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch (globs allowed); empty means the whole cluster.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    kubeconfig: str | None = Field(
        default=None,
        description="A kubeconfig file for the operator's own writes; absent means in-cluster "
        "credentials, else $KUBECONFIG or ~/.kube/config (as kubectl finds them).",
    )
    distribution_host: str = Field(
        default="0.0.0.0",  # noqa: S104 (sidecars in other pods connect)
        description="Address the route-table distribution server listens on.",
    )
    distribution_port: int = Field(
        default=9443, ge=0, le=65535, description="Its port; 0 picks a free one (tests)."
    )
    distribution_cert_file: str | None = Field(
        default=None,
        description="TLS certificate for the distribution server; absent serves plain HTTP "
        "(only for tests and the local demo: tokens then cross the network in clear).",
    )
    distribution_key_file: str | None = Field(default=None, description="Its private key.")
    distribution_tls: bool = Field(
        default=False,
        description="Serve the distribution server over TLS with the webhook's certificate "
        "(the same Service names it), and publish the CA that signed it as the ConfigMap "
        "`routemesh-ca` (key ca.crt) in every namespace with RoutingPolicies, where injected "
        "sidecars mount it. Needs the webhook.",
    )
    token_audiences: list[str] = Field(
        default_factory=lambda: ["routemesh"],
        description="Audiences a sidecar's ServiceAccount token must carry (the projected "
        "token injection mounts is issued for these); empty accepts the API server's own.",
    )
    sidecar_forget_seconds: float = Field(
        default=120.0,
        gt=0,
        description="A sidecar that has not watched for this long stops counting as desired.",
    )
    shared_health_min_reporters: int = Field(
        default=2,
        ge=1,
        description="How many pods of a namespace must see a backend (or endpoint) fail before "
        "every sidecar there avoids it.",
    )
    shared_health_window_seconds: float = Field(
        default=60.0, gt=0, description="How recent those pods' reports must be."
    )
    injection: InjectionSettings = Field(
        default_factory=InjectionSettings,
        description="The sidecar that the webhook injects and which pods get it (JSON in "
        "ROUTEMESH_OPERATOR_INJECTION; the chart fills it from its values).",
    )
    standalone: bool = Field(
        default=False,
        description="One replica: it always writes. Otherwise replicas elect a leader on a "
        "Lease in `namespace`; followers compile but do not write, and report not ready.",
    )
    pod_name: str | None = Field(
        default=None,
        description="This replica's pod name (downward API): its identity on the Lease.",
    )
    lease_seconds: float = Field(
        default=15.0, gt=0, description="How long a leader's lease lasts without renewal."
    )
    webhook_enabled: bool = Field(
        default=True,
        description="Serve the sidecar-injection webhook (off only for tests and for clusters "
        "that inject by other means).",
    )
    webhook_port: int = Field(
        default=8443, ge=0, le=65535, description="Port the admission webhook serves TLS on."
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the operator's own Prometheus metrics (plain HTTP, `/metrics`); "
        "0 serves none. The chart sets 8080.",
    )
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 (a pod's port, scraped from outside it)
        description="Address the metrics port binds.",
    )
    webhook_host: str = Field(
        default="0.0.0.0",  # noqa: S104 (the API server connects through the Service)
        description="Address the admission webhook listens on.",
    )
    webhook_service: str = Field(
        default="routemesh-operator",
        description="The Service in front of the webhook. Operator-issued serving certificates "
        "name `<service>`, `<service>.<namespace>` and `<service>.<namespace>.svc`.",
    )
    webhook_extra_hosts: list[str] = Field(
        default_factory=list,
        description="More names or IP addresses for the serving certificate (tests add "
        "127.0.0.1, where a webhook `clientConfig.url` points at the operator directly).",
    )
    webhook_configuration: str = Field(
        default="routemesh-sidecar-injector",
        description="The MutatingWebhookConfiguration whose webhooks' `caBundle` the operator "
        "keeps up to date (with operator-issued certificates).",
    )
    webhook_certificates: Literal["operator", "cert-manager"] = Field(
        default="operator",
        description="Who issues the webhook's certificate: the operator (its own CA, kept in "
        "`webhook_secret`, rotated before expiry) or cert-manager (files mounted in "
        "`webhook_cert_dir`, caBundle injected by its cainjector).",
    )
    webhook_secret: str = Field(
        default="routemesh-webhook-certs",
        description="The Secret in `namespace` holding operator-issued webhook certificates.",
    )
    webhook_cert_dir: str = Field(
        default="/tmp/routemesh-webhook",  # noqa: S108 (the chart mounts an emptyDir here)
        description="Directory of the serving `tls.crt` and `tls.key`: where cert-manager's "
        "Secret is mounted, or where operator-issued ones are written (the root filesystem is "
        "read-only, so the chart mounts a writable volume here).",
    )
    webhook_ca_validity_days: float = Field(
        default=3650.0, gt=0, description="Lifetime of an operator-issued webhook CA, in days."
    )
    webhook_serving_validity_days: float = Field(
        default=365.0,
        gt=0,
        description="Lifetime of an operator-issued serving certificate, in days (never past "
        "its CA's expiry).",
    )
    webhook_rotate_before_days: float = Field(
        default=30.0,
        gt=0,
        description="Renew an operator-issued certificate (serving or CA) this many days "
        "before it expires; shorter than both lifetimes.",
    )

    @model_validator(mode="after")
    def _tls_needs_the_webhook(self) -> OperatorSettings:
        # The distribution server borrows the webhook's certificate; without the webhook it
        # would never start.
        if self.distribution_tls and not self.webhook_enabled:
            raise ValueError("distribution_tls needs webhook_enabled (it uses its certificate)")
        return self
