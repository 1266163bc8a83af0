"""The Dockerfiles, checked without a daemon, and the images' locks.

What they copy exists, what they run is what the chart and the injected pods run, they run as
non-root with no shell, and each image's lock covers its extras (and the sidecar's holds neither
kopf nor the Kubernetes client).
"""

from __future__ import annotations

import json
import re
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from routemesh_operator.injection.settings import InjectionSettings
from routemesh_testing.controlplane import REPO_ROOT

IMAGES = REPO_ROOT / "images"
DOCKERFILES = {"sidecar": IMAGES / "sidecar.Dockerfile", "operator": IMAGES / "operator.Dockerfile"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def last(path: Path, instruction: str) -> str:
    return [args for word, args in instructions(path) if word == instruction][-1]


def extras_requirements(extra: str) -> set[str]:
    """Normalised names of what the project requires with this extra (and with none)."""
    names = set()
    for line in requires("routemesh") or ():
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": extra}):
            names.add(re.sub(r"[-_.]+", "-", requirement.name).lower())
    names.discard("routemesh")  # the operator extra names the sidecar extra through itself
    return names


def lock_names(extras: str) -> set[str]:
    lock = IMAGES / "locks" / f"{extras.replace(',', '-')}.txt"
    lines = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    for line in lines:
        assert re.fullmatch(r"[a-z0-9-_.]+==\S+ --hash=sha256:[0-9a-f]{64}", line), line
    return {re.sub(r"[-_.]+", "-", line.split("==")[0]) for line in lines}


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_file_a_dockerfile_copies_exists(image: str):
    for word, args in instructions(DOCKERFILES[image]):
        if word != "COPY" or args.startswith("--from="):
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{image}: COPY {source} does not exist"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_it_runs_as_non_root_with_an_exec_form_command_and_no_shell(image: str):
    path = DOCKERFILES[image]
    user = last(path, "USER")
    assert user.split(":")[0] not in {"0", "root"}
    assert json.loads(last(path, "ENTRYPOINT")) == []
    command = json.loads(last(path, "CMD"))  # exec form: JSON, run without a shell
    assert isinstance(command, list)
    assert command


def test_the_images_run_what_the_chart_and_injection_run():
    sidecar_command = json.loads(last(DOCKERFILES["sidecar"], "CMD"))
    assert sidecar_command == list(InjectionSettings().sidecar_command)
    deployment = (REPO_ROOT / "charts/routemesh/templates/deployment.yaml").read_text()
    args = re.search(r"^\s*args: \[(.*)\]\s*$", deployment, re.MULTILINE)
    assert args is not None
    assert json.loads(last(DOCKERFILES["operator"], "CMD")) == [args.group(1).strip()]


@pytest.mark.parametrize(
    ("extras", "image"),
    [
        ("sidecar", "sidecar"),
        ("sidecar,tokenizer", "sidecar"),
        ("sidecar,embeddings", "sidecar"),
        ("operator", "operator"),
    ],
)
def test_each_lock_covers_its_extras_and_the_sidecars_has_no_cluster_client(
    extras: str, image: str
):
    locked = lock_names(extras)
    wanted = set().union(*(extras_requirements(extra) for extra in extras.split(",")))
    if extras == "operator":
        wanted |= extras_requirements("sidecar")
    assert wanted - locked == set(), f"{extras} lock misses {wanted - locked}"
    if image == "sidecar":
        assert locked.isdisjoint({"kopf", "kubernetes", "kubernetes-asyncio"})


def test_the_sidecars_variants_are_a_build_argument_with_a_lock_each():
    dockerfile = DOCKERFILES["sidecar"].read_text()
    default = re.search(r"^ARG EXTRAS=(\S+)$", dockerfile, re.MULTILINE)
    assert default is not None
    assert default.group(1) == "sidecar"
    assert 'hack/build-rootfs.sh "$EXTRAS"' in dockerfile
    for extras in ("sidecar", "sidecar,tokenizer", "sidecar,embeddings"):
        assert (IMAGES / "locks" / f"{extras.replace(',', '-')}.txt").exists()


def test_the_quantizers_build_lock_covers_its_extra():
    """images/locks/model-build.txt: what hack/build-rootfs.sh quantizes MiniLM with."""
    own = {
        re.sub(r"[-_.]+", "-", Requirement(line).name).lower()
        for line in requires("routemesh") or ()
        if Requirement(line).marker is not None
        and Requirement(line).marker.evaluate({"extra": "model-build"})  # type: ignore[union-attr]
        and not Requirement(line).marker.evaluate({"extra": ""})  # type: ignore[union-attr]
    }
    assert own == {"onnx"}
    assert own <= lock_names("model-build")
    # That the tree it builds holds no onnx is tests/images/test_rootfs.py's, on a real build.
