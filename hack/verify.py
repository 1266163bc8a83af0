"""Check that generated and pinned files agree with their sources; `make verify` runs it.

Each check returns a list of problems. Generators (CRDs from the API models, the chart's values
schema) register here as they are written: they regenerate into memory and compare with what is
checked in, so drift fails CI instead of shipping. `--write` rewrites generated files in place.

It reads only the repository; it never changes anything unless `--write` is given.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from routemesh_testing.controlplane import pinned_versions

REPO = Path(__file__).resolve().parents[1]

# The k8s.io/kubernetes go.mod requires each of these at v0.0.0; the wrapper must replace all of
# them with the published v0.<minor>.<patch> that matches the pinned Kubernetes version.
STAGING_MODULES = [
    "api",
    "apiextensions-apiserver",
    "apimachinery",
    "apiserver",
    "cli-runtime",
    "client-go",
    "cloud-provider",
    "cluster-bootstrap",
    "code-generator",
    "component-base",
    "component-helpers",
    "controller-manager",
    "cri-api",
    "cri-client",
    "csi-translation-lib",
    "dynamic-resource-allocation",
    "endpointslice",
    "externaljwt",
    "kms",
    "kube-aggregator",
    "kube-controller-manager",
    "kube-proxy",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "metrics",
    "mount-utils",
    "pod-security-admission",
    "sample-apiserver",
]

Check = Callable[[bool], list[str]]


def check_controlplane_pins(write: bool) -> list[str]:
    """The Go wrapper modules pin the versions that hack/versions.sh names."""
    del write  # pins are edited by hand (then `go mod tidy`), never generated
    versions = pinned_versions()
    problems: list[str] = []
    gomod = (REPO / "hack/controlplane/go.mod").read_text()
    if f"require k8s.io/kubernetes {versions['k8s']}\n" not in gomod:
        problems.append(
            f"hack/controlplane/go.mod does not require k8s.io/kubernetes {versions['k8s']}"
        )
    staging = "v0." + versions["k8s"].removeprefix("v1.")
    replaced = dict(re.findall(r"^\s*k8s\.io/(\S+) => k8s\.io/\S+ (\S+)$", gomod, re.MULTILINE))
    for module in STAGING_MODULES:
        if replaced.get(module) != staging:
            problems.append(
                f"hack/controlplane/go.mod: k8s.io/{module} must be replaced at {staging}"
            )
    etcd_mod = (REPO / "hack/etcd/go.mod").read_text()
    if f"require go.etcd.io/etcd/server/v3 {versions['etcd']}\n" not in etcd_mod:
        problems.append(f"hack/etcd/go.mod does not require etcd server {versions['etcd']}")
    return problems


CHECKS: dict[str, Check] = {
    "control-plane version pins": check_controlplane_pins,
}


def main(argv: list[str] | None = None) -> int:
    """Run every check; print each problem; exit 1 if there was any."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite generated files")
    args = parser.parse_args(argv)
    failed = False
    for name, check in CHECKS.items():
        problems = check(args.write)
        print(f"{'FAIL' if problems else 'ok  '} {name}")
        for problem in problems:
            print(f"     {problem}")
        failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
