"""How the routing-quality benchmark reads OpenAI's `evals` registry out of its wheel.

`routemesh_testing.prompts.evals_tasks()` takes the first samples of each chosen dataset from
inside the zip. These tests build a small wheel of the same layout, so that what a prompt is
made of, which file is read and what a short or missing dataset does are pinned without the
46 MB download that `make bench-data` does.
"""

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from routemesh_testing import prompts

pytestmark = pytest.mark.timeout(30)


def write_wheel(path: Path, datasets: Mapping[str, Mapping[str, Sequence[object]]]) -> Path:
    """A zip with `evals/registry/data/<dataset>/<file>` JSONL members, one sample a line."""
    with zipfile.ZipFile(path, "w") as archive:
        for dataset, files in datasets.items():
            for name, samples in files.items():
                lines = "".join(json.dumps({"input": s, "ideal": "x"}) + "\n" for s in samples)
                archive.writestr(f"evals/registry/data/{dataset}/{name}", lines)
    return path


def chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@pytest.fixture
def one_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "EVALS_PER_DATASET", 2)
    monkeypatch.setattr(prompts, "EVALS_DATASETS", {"math": ("equations",)})


@pytest.mark.usefixtures("one_dataset")
@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (  # the instruction is the system message and the user message only the data
            [chat("Solve for x.", "8x + 4x = 12"), chat("Solve for x.", "x - 1 = 0")],
            ["Solve for x.\n\n8x + 4x = 12", "Solve for x.\n\nx - 1 = 0"],
        ),
        (  # a completion-style sample is its prompt string; empty parts are dropped
            ["  What is 2 + 2?  ", chat("", "What is 3 + 3?")],
            ["What is 2 + 2?", "What is 3 + 3?"],
        ),
        (  # a sample with no prompt at all is passed over, and only the first ones are read
            [chat("", ""), None, "one", "two", "three"],
            ["one", "two"],
        ),
    ],
)
def test_a_sample_is_its_messages_joined_in_order(
    tmp_path: Path, samples: list[object], expected: list[str]
):
    wheel = write_wheel(tmp_path / "evals.whl", {"equations": {"samples.jsonl": samples}})
    assert prompts.evals_tasks(wheel) == [(text, "math") for text in expected]


@pytest.mark.usefixtures("one_dataset")
def test_the_first_jsonl_file_in_name_order_is_read(tmp_path: Path):
    files = {"b.jsonl": ["second", "second"], "a.jsonl": ["first", "first"], "0.yaml": ["no"]}
    wheel = write_wheel(tmp_path / "evals.whl", {"equations": files})
    assert prompts.evals_tasks(wheel) == [("first", "math"), ("first", "math")]


@pytest.mark.usefixtures("one_dataset")
def test_a_missing_or_short_dataset_is_an_error_not_a_smaller_set(tmp_path: Path):
    missing = write_wheel(tmp_path / "missing.whl", {"other": {"a.jsonl": ["x", "y"]}})
    with pytest.raises(LookupError, match="no JSONL file under evals/registry/data/equations/"):
        prompts.evals_tasks(missing)
    short = write_wheel(tmp_path / "short.whl", {"equations": {"a.jsonl": ["x", ""]}})
    with pytest.raises(LookupError, match="fewer than 2 samples"):
        prompts.evals_tasks(short)


def test_without_the_download_the_error_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ROUTEMESH_CACHE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="run `make bench-data` first"):
        prompts.evals_tasks()


def test_every_category_but_roleplay_has_its_datasets_and_none_is_chosen_twice():
    chosen = [name for names in prompts.EVALS_DATASETS.values() for name in names]
    assert len(chosen) == len(set(chosen)) == 34
    assert set(prompts.EVALS_DATASETS) == set(prompts.CATEGORIES) - {"roleplay"}
