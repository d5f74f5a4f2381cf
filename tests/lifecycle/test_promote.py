"""The promotion gate, --force, rollback and the history, on a local target with the
fetch-model round trip: what a device downloads is exactly the ONNX of the promoted run."""

import json

from azaion_training.lifecycle.evaluate import Comparison, ModelScore
from azaion_training.lifecycle.promote import gate_passes
from tests.conftest import run_azaion
from tests.distribution.conftest import EMAIL, PASSWORD
from tests.lifecycle.conftest import json_of


def _score(run: str, map50: float) -> ModelScore:
    return ModelScore(run, {"mAP50": map50, "mAP50-95": map50 / 2, "precision": 0.5, "recall": 0.5})


def test_gate_is_candidate_map50_at_least_production_minus_delta():
    worse = Comparison("d", "test", 10, 64, _score("new", 0.40), _score("prod", 0.50))
    assert not gate_passes(worse, 0.0) and not gate_passes(worse, 0.05)
    assert gate_passes(worse, 0.1)
    assert gate_passes(Comparison("d", "test", 10, 64, _score("new", 0.5), _score("prod", 0.5)), 0.0)


def _target_files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _fetch(two_runs, target: str, out) -> bytes:
    result = run_azaion("fetch-model", "azaion.onnx", "--target", target, "--out", str(out), env=two_runs.env)
    assert result.returncode == 0, result.stderr[-2000:]
    return out.read_bytes()


def _history(two_runs) -> list[dict]:
    path = two_runs.layout().models / "published" / "models" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_promote_gate_force_rollback_round_trip(two_runs, tmp_path):
    target_dir = tmp_path / "target"
    target = f"local:{target_dir}"
    models = two_runs.layout().models
    first_onnx, second_onnx = (models / run / "azaion.onnx" for run in (two_runs.first, two_runs.second))

    def promote(*extra: str):
        return run_azaion("models", "promote", two_runs.second if extra else two_runs.first, "--target", target,
                          *extra, env={**two_runs.env, "COLUMNS": "200"})

    first = promote()  # nothing promoted yet: publishes without a comparison
    assert first.returncode == 0, first.stderr[-2000:]
    assert "(first)" in first.stdout
    assert _fetch(two_runs, target, tmp_path / "a.onnx") == first_onnx.read_bytes()
    published = _target_files(target_dir)

    refused = promote("--min-delta", "-1")  # the candidate would have to beat production by 1.0 mAP50
    assert refused.returncode == 1, refused.stderr[-2000:]
    assert "refused" in refused.stderr and "unchanged" in refused.stderr and "Traceback" not in refused.stderr
    assert "difference" in refused.stdout and "mAP50" in refused.stdout  # the comparison table
    assert _target_files(target_dir) == published  # not one byte of the published model changed

    forced = promote("--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert _fetch(two_runs, target, tmp_path / "b.onnx") == second_onnx.read_bytes()

    back = run_azaion("models", "rollback", "--target", target, env=two_runs.env)
    assert back.returncode == 0, back.stderr[-2000:]
    assert _fetch(two_runs, target, tmp_path / "c.onnx") == first_onnx.read_bytes()

    decision = json_of(promote("--min-delta", "1", "--json"))  # through the gate this time
    assert decision["action"] == "promote" and decision["event"]["gate"]["passed"]
    assert _fetch(two_runs, target, tmp_path / "d.onnx") == second_onnx.read_bytes()

    history = _history(two_runs)
    mine = [e for e in history if e["target"] == target]
    assert [(e["action"], e["run"], e["forced"] if "forced" in e else None) for e in mine] == [
        ("promote", two_runs.first, False), ("refused", two_runs.second, False), ("promote", two_runs.second, True),
        ("rollback", two_runs.first, None), ("promote", two_runs.second, False)]
    assert mine[0]["gate"] is None and mine[2]["gate"] is None  # first promotion, forced: no comparison
    for event in (mine[1], mine[4]):
        gate = event["gate"]
        assert gate["split"] == "test" and gate["images"] == 12 and gate["min_delta"] in (-1.0, 1.0)
        assert {"mAP50", "mAP50-95"} <= set(gate["candidate"]) and {"mAP50"} <= set(gate["production"])
    assert all(e["by"] and e["at"] and e["onnx_sha256"] for e in mine)
    assert mine[3]["from"] == two_runs.second

    versions = {v["run"]: v for v in json_of(run_azaion("models", "list", "--json", env=two_runs.env))}
    assert versions[two_runs.second]["production_on"] == [target]
    assert versions[two_runs.first]["production_on"] == []
    table = run_azaion("models", "list", env={**two_runs.env, "COLUMNS": "250"})
    assert "(production)" in table.stdout

    assert run_azaion("models", "rollback", "--target", target, env=two_runs.env).returncode == 0
    nothing = run_azaion("models", "rollback", "--target", target, env=two_runs.env)
    assert nothing.returncode == 2 and "nothing to roll back to" in nothing.stderr
    assert _fetch(two_runs, target, tmp_path / "e.onnx") == first_onnx.read_bytes()


def test_promote_and_rollback_on_the_azaion_target(two_runs, api, tmp_path):
    """The same promotions through the Azaion API (small parts, manifest) and the S3 CDN (big parts)."""
    env = {**two_runs.env, "AZAION_API_URL": api.url, "AZAION_API_EMAIL": EMAIL, "AZAION_API_PASSWORD": PASSWORD}
    models = two_runs.layout().models
    for args in ([two_runs.first], [two_runs.second, "--force"]):
        result = run_azaion("models", "promote", *args, "--target", "azaion", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
    assert run_azaion("models", "rollback", "--target", "azaion", env=env).returncode == 0
    fetched = run_azaion("fetch-model", "azaion.onnx", "--out", str(tmp_path / "f.onnx"), env=env)
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert (tmp_path / "f.onnx").read_bytes() == (models / two_runs.first / "azaion.onnx").read_bytes()
    assert PASSWORD not in fetched.stdout + fetched.stderr
    compared = json_of(run_azaion("evaluate", "--candidate", two_runs.second, "--baseline", "production",
                                  "--target", "azaion", "--json", env=env))
    assert compared["baseline"]["run"] == two_runs.first  # production after the rollback
    azaion = [e for e in _history(two_runs) if e["target"] == "azaion"]
    assert [(e["action"], e["run"]) for e in azaion] == [
        ("promote", two_runs.first), ("promote", two_runs.second), ("rollback", two_runs.first)]
