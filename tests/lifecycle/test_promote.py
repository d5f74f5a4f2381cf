"""The promotion gate, --force, rollback and the history, on a local target with the
fetch-model round trip: what a device downloads is exactly the ONNX of the promoted run."""

import json

from azaion_training.inference.scoring import ModelScore
from azaion_training.lifecycle.evaluate import Comparison
from azaion_training.lifecycle.promote import GateRules, gate_reasons
from tests.conftest import run_azaion
from tests.distribution.conftest import EMAIL, PASSWORD
from tests.lifecycle.conftest import json_of


def _score(run: str, map50: float, per_class: dict | None = None) -> ModelScore:
    return ModelScore(run, {"mAP50": map50, "mAP50-95": map50 / 2, "precision": 0.5, "recall": 0.5},
                      per_class or {}, imgsz=64)


def _rules(min_delta: float = 0.0, min_map50: float = 0.0, instances: int = 20, drop: float = 0.1) -> GateRules:
    return GateRules(min_delta, min_map50, instances, drop)


def test_gate_is_candidate_map50_at_least_production_minus_delta():
    worse = Comparison("d", "test", 10, 64, _score("new", 0.40), _score("prod", 0.50))
    assert gate_reasons(worse, _rules(0.0))[0] and gate_reasons(worse, _rules(0.05))[0]
    assert gate_reasons(worse, _rules(0.1)) == ([], [])
    assert gate_reasons(Comparison("d", "test", 10, 64, _score("new", 0.5), _score("prod", 0.5)), _rules()) == ([], [])
    reason = gate_reasons(worse, _rules(0.0))[0][0]
    assert "[test, 10 images, imgsz 64, ONNX]" in reason  # every figure names where it was measured


def test_gate_floor_applies_to_a_first_promotion_too():
    first = Comparison("d", "test", 10, 64, _score("new", 0.0), None)
    reasons, _ = gate_reasons(first, _rules(min_map50=0.1))
    assert len(reasons) == 1 and "PROMOTION_MIN_MAP50" in reasons[0] and "0.0000" in reasons[0]
    assert gate_reasons(Comparison("d", "test", 10, 64, _score("new", 0.2), None), _rules(min_map50=0.1)) == ([], [])


def test_gate_class_guard_names_the_class_and_both_figures():
    def rows(truck: float, car: float, truck_n: int = 30) -> dict:
        return {"Truck": {"ap50": truck, "instances": truck_n}, "Car": {"ap50": car, "instances": 50}}

    candidate = Comparison("d", "test", 10, 64, _score("new", 0.70, rows(0.40, 0.95)),
                           _score("prod", 0.65, rows(0.70, 0.60)))
    reasons, drops = gate_reasons(candidate, _rules())  # better overall, but Truck fell by 0.30
    assert [d["class"] for d in drops] == ["Truck"] and drops[0]["drop"] == 0.3
    assert len(reasons) == 1 and "Truck" in reasons[0] and "0.7000" in reasons[0] and "0.4000" in reasons[0]
    few = Comparison("d", "test", 10, 64, _score("new", 0.70, rows(0.40, 0.95, truck_n=5)),
                     _score("prod", 0.65, rows(0.70, 0.60, truck_n=5)))
    assert gate_reasons(few, _rules()) == ([], [])  # 5 instances: below PROMOTION_CLASS_MIN_INSTANCES


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
    first_onnx, second_onnx = (models / run / "export" / "azaion-64-opset-default.onnx"
                               for run in (two_runs.first, two_runs.second))

    def promote(*extra: str):
        return run_azaion("models", "promote", two_runs.second if extra else two_runs.first, "--target", target,
                          *extra, env={**two_runs.env, "COLUMNS": "200"})

    first = promote()  # nothing promoted yet: judged against the floor only
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
    assert mine[0]["gate"]["production"] is None and mine[0]["gate"]["passed"]  # first: the floor only
    assert mine[2]["forced"] and mine[2]["gate"]["passed"] in (True, False)  # forced: figures recorded all the same
    for event in (mine[1], mine[2], mine[4]):
        gate = event["gate"]
        assert gate["split"] == "test" and gate["images"] == 12 and gate["engine"] == "ONNX" and gate["imgsz"] == 64
        assert {"mAP50", "mAP50-95"} <= set(gate["candidate"]) and {"mAP50"} <= set(gate["production"])
        assert gate["interval"]["resamples"] == 1000
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
    assert (tmp_path / "f.onnx").read_bytes() == \
        (models / two_runs.first / "export" / "azaion-64-opset-default.onnx").read_bytes()
    assert PASSWORD not in fetched.stdout + fetched.stderr
    compared = json_of(run_azaion("evaluate", "--candidate", two_runs.second, "--baseline", "production",
                                  "--target", "azaion", "--json", env=env))
    assert compared["baseline"]["run"] == two_runs.first  # production after the rollback
    azaion = [e for e in _history(two_runs) if e["target"].startswith("azaion:") and api.url in e["target"]]
    assert [(e["action"], e["run"]) for e in azaion] == [
        ("promote", two_runs.first), ("promote", two_runs.second), ("rollback", two_runs.first)]
