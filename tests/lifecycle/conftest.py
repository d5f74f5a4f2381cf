"""Fixtures of the registry/evaluation/promotion tests: one root holding two tiny real runs, a
new one and a fine-tune of it, on the synthetic dataset (its valid images copied as its test
split, the split the gate evaluates)."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from azaion_training.layout import Layout
from azaion_training.settings import Settings, load_settings
from azaion_training.training.runs import latest_run
from tests.conftest import run_azaion
from tests.distribution.conftest import api, s3  # noqa: F401  (the azaion target: contract API + moto S3 CDN)
from tests.training.conftest import DATASET, make_root, tiny_env

KEY = "lifecycle-tests-model-key"


@dataclass
class TwoRuns:
    root: Path
    env: dict[str, str]
    first: str  # trained from yolo26n.yaml
    second: str  # fine-tuned from the first

    def settings(self) -> Settings:
        return load_settings(env=self.env)

    def layout(self) -> Layout:
        return Layout(self.settings().paths)


def json_of(result) -> object:
    """The document a `--json` command printed (after any JSON log lines, one per line)."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("{", "[", "[]"))
    return json.loads("\n".join(lines[start:]))


@pytest.fixture(scope="session")
def two_runs(synthetic_dataset, tmp_path_factory) -> TwoRuns:
    root = make_root(tmp_path_factory.mktemp("lifecycle"), synthetic_dataset)  # with a test split
    env = tiny_env(root, MODEL_ENCRYPTION_KEY=KEY)
    layout = Layout(load_settings(env=env).paths)
    runs: list[str] = []
    for extra in ([], ["--from", "{first}/weights/best.pt"]):
        args = [a.format(first=layout.models / runs[0]) if runs else a for a in extra]
        result = run_azaion("train", "--dataset", DATASET, "--epochs", "1", *args, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs.append(latest_run(layout).run)
    return TwoRuns(root, env, runs[0], runs[1])
