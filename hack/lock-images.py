"""Write the images' lock files, images/locks/<extras>.txt: every dependency pinned by hash.

`make lock` runs it when pyproject.toml's dependencies change. It asks pip to resolve each
image's extras (`pip install --dry-run --report`, wheels only, for this interpreter and platform:
CPython 3.11 on Linux x86-64, the images' base) and keeps the exact version and the sha256 of
the wheel pip chose. hack/build-rootfs.sh and the Dockerfiles install with `--require-hashes`,
so nothing unpinned gets in. A test checks that each lock covers its extras.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "images" / "locks"
# Each image (or variant) and the extras it installs.
IMAGES = ("sidecar", "sidecar,tokenizer", "sidecar,embeddings", "operator")
# Extras an image's build stage uses and never keeps: their lock holds the extra's own
# requirements (and theirs), not the project's.
BUILD_ONLY = ("model-build",)


def resolve(extras: str) -> list[str]:
    """`name==version --hash=sha256:...` for every dependency of the project with `extras`."""
    if extras in BUILD_ONLY:
        return _resolve(_extra_requirements(extras))
    return _resolve([f"{REPO}[{extras}]"])


def _extra_requirements(extra: str) -> list[str]:
    """The requirements pyproject.toml lists under one optional extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found: list[str] = project["optional-dependencies"][extra]
    return found


def _resolve(requirements: list[str]) -> list[str]:
    """What pip would install for these requirements, each pinned by the hash of its wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--ignore-installed",
                "--only-binary=:all:",
                "--quiet",
                "--report",
                str(report),
                *requirements,
            ],
            check=True,
        )
        resolved = json.loads(report.read_text())["install"]
    lines = []
    for item in resolved:
        if item.get("is_direct"):  # the project itself: built from the source tree
            continue
        metadata = item["metadata"]
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{metadata['name'].lower()}=={metadata['version']} --hash=sha256:{digest}")
    return sorted(lines)


def main() -> int:
    """Write every lock (refusing to run where the hashes would not be the images')."""
    if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux":
        raise SystemExit(
            "lock-images: run it with CPython 3.11 on Linux x86-64, the images' base: the "
            f"wheels pip picks (and their hashes) depend on it; this is Python "
            f"{platform.python_version()} on {sys.platform} {platform.machine()}"
        )
    LOCKS.mkdir(parents=True, exist_ok=True)
    # `lock-images.py EXTRAS...` rewrites only those (a new variant, without churning the rest).
    known = IMAGES + BUILD_ONLY
    chosen = sys.argv[1:] or known
    for extras in chosen:
        if extras not in known:
            raise SystemExit(f"lock-images: no image installs extras {extras!r}; known: {known}")
        path = LOCKS / f"{extras.replace(',', '-')}.txt"
        what = "build stage's" if extras in BUILD_ONLY else "image's"
        header = (
            f"# The {extras} {what} dependencies, pinned by hash: written by hack/lock-images.py"
            " (make lock).\n"
        )
        path.write_text(header + "\n".join(resolve(extras)) + "\n")
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
