"""alignahead.studies: expansion of seeds and axes into specs, dotted paths, and the table's statistics
checked against numpy and scipy by hand; `alignahead study --local` on a tiny graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats

from alignahead import studies
from alignahead.cli import main
from alignahead.datasets import load_dataset
from alignahead.spec import JobSpec
from alignahead.study_cli import parse_axis, parse_seeds
from alignahead.trainer import Callbacks, Trainer

BASE: dict[str, Any] = {
    "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 60, "num_features": 8}},
    "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 8}],
    "training": {"epochs": 3, "device": "cpu"},
}
STRATEGY = "distillation.strategy"


# --- paths and expansion -------------------------------------------------------------------------------


def test_set_and_get_dotted_paths_leave_the_base_alone() -> None:
    out = studies.set_path(BASE, "distillation.alpha", 2.0)
    out = studies.set_path(out, "students.0.hidden_size", 32)
    assert out["distillation"] == {"alpha": 2.0} and out["students"][0]["hidden_size"] == 32
    assert "distillation" not in BASE and BASE["students"][0]["hidden_size"] == 8
    assert studies.get_path(out, "students.0.hidden_size") == 32 and studies.get_path(out, "training.nope") is None
    # students absent from the base: the spec's default students, then the index
    assert studies.set_path({}, "students.0.arch", "gcn")["students"][0]["count"] == 2


def test_expand_every_combination_for_every_seed_in_order() -> None:
    axes = {STRATEGY: ["none", "alignahead"], "distillation.alpha": [0.5, 1, 2]}
    runs = studies.expand(BASE, 2, axes)
    assert len(runs) == studies.count_jobs([0, 1], axes) == 12
    assert [(r.cell[STRATEGY], r.cell["distillation.alpha"], r.seed) for r in runs[:4]] == [
        ("none", 0.5, 0), ("none", 0.5, 1), ("none", 1.0, 0), ("none", 1.0, 1)]  # fmt: skip
    for r in runs:
        assert isinstance(r.spec, JobSpec) and r.spec.training.seed == r.seed
        assert r.spec.distillation.strategy == r.cell[STRATEGY] and r.spec.training.epochs == 3
    assert studies.normalized_axes(runs) == {STRATEGY: ["none", "alignahead"], "distillation.alpha": [0.5, 1.0, 2.0]}
    assert [r.seed for r in studies.expand(BASE, [7, 3], {})] == [7, 3]
    assert studies.cells({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


@pytest.mark.parametrize(
    "axes,seeds,loc,words",
    [
        ({"distillation.strategi": ["none"]}, 1, ["axes", "distillation.strategi"], ["no field 'strategi'"]),
        ({"students.arch": ["gcn"]}, 1, ["axes", "students.arch"], ["students.0.arch"]),
        ({"students.5.arch": ["gcn"]}, 1, ["axes", "students.5.arch"], ["only 1"]),
        ({"students.\u00b3.arch": ["gcn"]}, 1, ["axes", "students.\u00b3.arch"], ["is a list; index it"]),
        ({"distillation.tau": [1.0, -2.0]}, 1, ["axes", "distillation.tau"], ["tau=-2.0"]),
        ({"students.0.count": [1]}, 1, ["axes", "students.0.count"], ["count=1", "at least 2 students"]),
        ({"training.seed": [1]}, 1, ["axes", "training.seed"], ["seeds"]),
        ({"distillation.alpha": [1, 2, 3]}, 5, ["axes"], ["15 jobs", "limit of 10"]),
        ({"distillation.alpha": [1, 1.0]}, 1, ["axes", "distillation.alpha"], ["repeats"]),
        ({}, 0, ["seeds"], ["at least 1"]),
        ({}, [1, -1], ["seeds"], ["-1"]),
    ],
)
def test_expand_refuses_naming_the_path_or_combination(axes: dict, seeds: Any, loc: list, words: list) -> None:
    with pytest.raises(studies.StudyError) as e:
        studies.expand(BASE, seeds, axes, max_jobs=10)
    assert e.value.loc == loc
    for word in words:
        assert word in e.value.message


# --- statistics -------------------------------------------------------------------------------------------


def _outcomes(table: dict[str, list[tuple[float, float]]], status: dict | None = None) -> list[studies.Outcome]:
    """Per strategy, per seed, (test_at_best, best_val) of student 0 and student 1 (= twice student 0)."""
    out = []
    for strategy, values in table.items():
        for seed, (test, val) in enumerate(values):
            students = [{"student": 0, "test_at_best": test, "best_val": val},
                        {"student": 1, "test_at_best": 2 * test, "best_val": None}]  # fmt: skip
            st = (status or {}).get((strategy, seed), "succeeded")
            out.append(studies.Outcome({STRATEGY: strategy}, seed, st, students if st == "succeeded" else None, 2))
    return out


def test_table_statistics_equal_numpy_and_scipy() -> None:
    none = [(0.80, 0.70), (0.75, 0.72), (0.90, 0.66), (0.85, 0.69)]
    ahead = [(0.82, 0.71), (0.80, 0.70), (0.91, 0.69), (0.84, 0.74)]
    rows = studies.study_table(_outcomes({"none": none, "alignahead": ahead}), [{STRATEGY: "none"},
                                                                              {STRATEGY: "alignahead"}])  # fmt: skip
    assert [(r.cell[STRATEGY], r.student) for r in rows] == [("none", 0), ("none", 1), ("alignahead", 0),
                                                              ("alignahead", 1)]  # fmt: skip
    a, b = np.array([t for t, _ in ahead]), np.array([t for t, _ in none])
    stat = rows[2].metrics["test_at_best"]
    assert stat.n == 4 and stat.mean == pytest.approx(a.mean(), rel=1e-14) and stat.std == pytest.approx(a.std(ddof=1))
    diff = stat.vs_baseline
    d = a - b
    low, high = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert diff is not None and diff.n == 4 and diff.mean_diff == pytest.approx(d.mean(), rel=1e-12)
    assert diff.ci_low == pytest.approx(low, rel=1e-10) and diff.ci_high == pytest.approx(high, rel=1e-10)
    assert diff.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-10)
    # student 1: twice student 0's test score; best_val missing: n 0, no comparison numbers
    s1 = rows[3].metrics
    assert s1["test_at_best"].mean == pytest.approx(2 * a.mean()) and s1["best_val"].n == 0
    assert s1["best_val"].mean is None and s1["best_val"].vs_baseline == studies.Comparison(0, None, None, None, None)
    assert rows[0].metrics["test_at_best"].vs_baseline is None  # the baseline itself
    # as a dict and as CSV
    as_dict = rows[2].as_dict()
    assert as_dict["test_at_best"]["vs_baseline"]["p_value"] == diff.p_value and as_dict["succeeded"] == 4
    lines = studies.table_csv(rows, [STRATEGY]).splitlines()
    assert lines[0].startswith(f"{STRATEGY},student,jobs,succeeded,test_at_best_n,test_at_best_mean,test_at_best_std")
    fields = lines[3].split(",")
    assert fields[:5] == ["alignahead", "0", "4", "4", "4"] and float(fields[5]) == stat.mean


def test_pairs_by_seed_and_small_samples_give_null_ci_and_p() -> None:
    # seed 1 of the baseline failed: the pairs are seeds 0 and 2 only
    none = [(0.5, 0.5), (0.9, 0.9), (0.7, 0.7)]
    ahead = [(0.6, 0.5), (0.1, 0.5), (0.9, 0.5)]
    rows = studies.study_table(_outcomes({"none": none, "alignahead": ahead}, {("none", 1): "failed"}))
    diff = rows[2].metrics["test_at_best"].vs_baseline
    assert diff is not None and diff.n == 2 and diff.mean_diff == pytest.approx(0.15)
    assert rows[0].succeeded == 2 and rows[0].jobs == 3
    # one pair: a mean difference, no interval, no p-value; one value: no std
    rows = studies.study_table(_outcomes({"none": none[:1], "alignahead": ahead[:1]}))
    one = rows[2].metrics["test_at_best"]
    assert one.std is None and one.vs_baseline == studies.Comparison(1, pytest.approx(0.1), None, None, None)
    # equal differences: zero-width interval, no p-value (the t statistic is undefined)
    same = studies.paired([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert same.mean_diff == pytest.approx(0.1) and same.ci_low == pytest.approx(same.ci_high) and same.p_value is None


def test_baseline_is_the_none_cell_with_the_other_axes_equal() -> None:
    outcomes = []
    for strategy, alpha, test in [("none", 1.0, 0.5), ("none", 2.0, 0.6), ("alignahead", 1.0, 0.7),
                                  ("alignahead", 2.0, 0.9)]:  # fmt: skip
        for seed in range(2):
            students = [{"test_at_best": test + seed / 100, "best_val": 0.0}]
            outcomes.append(studies.Outcome({STRATEGY: strategy, "distillation.alpha": alpha}, seed, "succeeded",
                                            students))  # fmt: skip
    rows = {(r.cell[STRATEGY], r.cell["distillation.alpha"]): r for r in studies.study_table(outcomes)}
    assert rows[("alignahead", 1.0)].metrics["test_at_best"].vs_baseline.mean_diff == pytest.approx(0.2)
    assert rows[("alignahead", 2.0)].metrics["test_at_best"].vs_baseline.mean_diff == pytest.approx(0.3)


# --- the CLI ------------------------------------------------------------------------------------------------


def test_axis_and_seed_arguments_are_yaml_scalars() -> None:
    assert parse_axis("distillation.strategy=none,one-to-one") == (STRATEGY, ["none", "one-to-one"])
    assert parse_axis("distillation.alpha=0.5,1,2e3") == ("distillation.alpha", [0.5, 1, 2000.0])
    assert parse_axis("training.patience=null,5") == ("training.patience", [None, 5])
    assert parse_axis("distillation.tau=auto,100") == ("distillation.tau", ["auto", 100])
    assert parse_axis("students=[[{arch: gcn, count: 2}], [{arch: sage, count: 2}]]")[1][1] == [
        {"arch": "sage", "count": 2}]  # fmt: skip
    assert parse_seeds("4") == 4 and parse_seeds("0,3,7") == [0, 3, 7]


def test_study_local_prints_the_table_of_the_library_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(BASE))
    argv = ["study", str(spec), "--local", "--seeds", "2", "--axis", "distillation.strategy=none,alignahead",
            "--axis", "distillation.alpha=0.5", "--json", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["axes"] == {STRATEGY: ["none", "alignahead"], "distillation.alpha": [0.5]}
    assert payload["test"] == "paired t-test" and len(payload["table"]) == 4
    # each run is what the library gives for that spec
    for job in payload["jobs"]:
        data = studies.set_path(BASE, STRATEGY, job["cell"][STRATEGY])
        data = studies.set_path(studies.set_path(data, "distillation.alpha", 0.5), "training.seed", job["seed"])
        s = JobSpec.model_validate(data)
        result = Trainer(s, load_dataset(s.dataset, seed=job["seed"]), Callbacks()).run()
        assert [st["test_at_best"] for st in job["students"]] == [st.test_at_best for st in result.students]
    row = payload["table"][2]
    assert row["cell"][STRATEGY] == "alignahead" and row["test_at_best"]["n"] == 2
    tests = [j["students"][0]["test_at_best"] for j in payload["jobs"] if j["cell"][STRATEGY] == "alignahead"]
    assert row["test_at_best"]["mean"] == pytest.approx(np.mean(tests))
    assert row["test_at_best"]["vs_baseline"]["n"] == 2

    # the same as a rich table for people; a bad axis is refused before anything trains
    assert main(argv[:-2] + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert "alignahead" in out and "test at best" in out and "paired t-test" in out
    assert main(["study", str(spec), "--local", "--axis", "distillation.alfa=1"]) == 2
    assert "distillation.alfa" in capsys.readouterr().err
