"""Studies: one base job spec run over seeds and a grid of spec values, and the table that compares them.

Pure computation shared by the service (`POST /v1/studies`) and the CLI's `alignahead study --local`:
- `expand`: the base spec, seeds and axes (dotted spec paths -> value lists) into one validated spec
  per combination and seed, refusing an unknown path or a value the spec refuses with a message that
  names the combination;
- `study_table`: per cell (a combination of the non-seed axes) and per student position, n, mean and
  sample std (ddof=1) of `test_at_best` and `best_val` over seeds and, against the cell whose strategy
  is 'none' with the other axes equal, the mean paired difference over seeds (paired by seed), its 95%
  t confidence interval and the p-value of a paired t-test (scipy.stats.ttest_rel).
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from alignahead.enums import JobStatus
from alignahead.spec import MAX_SEED, JobSpec, did_you_mean, error_message, list_item_model, submodel

SEED_PATH = "training.seed"
NAME_PATH = "name"
STRATEGY_PATH = "distillation.strategy"
BASELINE = "none"
METRICS = ("test_at_best", "best_val")
TEST_NAME = "paired t-test"
CONFIDENCE = 0.95


class StudyError(ValueError):
    """A study that cannot run; `loc` is where (['axes', path], ['spec', ...], ['seeds']) as the API reports it."""

    def __init__(self, loc: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.loc = list(loc)
        self.message = message


# --- dotted paths -----------------------------------------------------------------------------------


def check_path(path: str) -> None:
    """Raise StudyError unless `path` names a field of the job spec (`students.0.hidden_size` indexes a list)."""
    parts = path.split(".")
    model: type[BaseModel] | None = JobSpec
    i = 0
    while i < len(parts):
        where = ".".join(parts[:i]) or "the spec"
        if model is None:
            raise StudyError(["axes", path], f"unknown spec path {path!r}: {where} has no fields")
        fields = model.model_fields
        part = parts[i]
        if part not in fields:
            raise StudyError(
                ["axes", path],
                f"unknown spec path {path!r}: {where} has no field {part!r}"
                + (did_you_mean(part, fields) or f"; its fields are {', '.join(fields)}"),
            )
        annotation = fields[part].annotation
        item = list_item_model(annotation)
        if item is not None and i + 1 < len(parts):
            if not (parts[i + 1].isascii() and parts[i + 1].isdigit()):
                raise StudyError(["axes", path], f"unknown spec path {path!r}: {part!r} is a list; index it, "
                                 f"e.g. {'.'.join(parts[: i + 1])}.0.{parts[i + 1]}")  # fmt: skip
            model, i = item, i + 2
            continue
        model, i = submodel(annotation), i + 1


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of the spec dict `data` with `value` at the dotted `path` (sections created as needed)."""
    out = copy.deepcopy(data)
    node: Any = out
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            index = int(part)
            if index >= len(node):
                raise StudyError(["axes", path], f"spec path {path!r}: the spec's {'.'.join(parts[:i])} has only "
                                 f"{len(node)} entries")  # fmt: skip
            node = node[index]
            continue
        if part == "students" and part not in node:
            node[part] = [s.model_dump(mode="json") for s in JobSpec.model_fields["students"].default]
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise StudyError(["axes", path], f"spec path {path!r}: {'.'.join(parts[: i + 1])} is not a section")
    last = parts[-1]
    if not isinstance(node, dict | list):
        raise StudyError(["axes", path], f"spec path {path!r}: {'.'.join(parts[:-1])} is not a section")
    if isinstance(node, list):
        index = int(last)
        if index >= len(node):
            raise StudyError(["axes", path], f"spec path {path!r}: the list has only {len(node)} entries")
        node[index] = value
    else:
        node[last] = value
    return out


def get_path(data: Any, path: str) -> Any:
    """The value at a dotted path of a spec dict (None where it is absent)."""
    node = data
    for part in path.split("."):
        if isinstance(node, list):
            node = node[int(part)] if part.isascii() and part.isdigit() and int(part) < len(node) else None
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return None
    return node


# --- expansion --------------------------------------------------------------------------------------


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """A count n means seeds 0..n-1; a list is taken as given (no repeats)."""
    if isinstance(seeds, bool):
        raise StudyError(["seeds"], "seeds must be a count or a list of integers")
    if isinstance(seeds, int):
        if seeds < 1:
            raise StudyError(["seeds"], f"seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    out = list(seeds)
    if not out:
        raise StudyError(["seeds"], "seeds must not be empty")
    for s in out:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise StudyError(["seeds"], f"seed {s!r} is not an integer in [0, 2^31-1]")
    if len(set(out)) != len(out):
        raise StudyError(["seeds"], f"seeds repeat: {out}; each seed pairs the runs of one repetition")
    return out


def count_jobs(seeds: Sequence[int], axes: Mapping[str, Sequence[Any]]) -> int:
    return len(seeds) * math.prod(len(v) for v in axes.values())


def cells(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, in expansion order."""
    paths = list(axes)
    return [dict(zip(paths, values, strict=True)) for values in itertools.product(*(axes[p] for p in paths))]


def normalized_axes(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The axes with each value as the validated specs hold it (1 -> 1.0 for a float field), in order."""
    out: dict[str, list[Any]] = {p: [] for p in (runs[0].cell if runs else {})}
    for run in runs:
        for p, v in run.cell.items():
            if v not in out[p]:
                out[p].append(v)
    return out


def combo_label(combo: Mapping[str, Any]) -> str:
    """`strategy=none alpha=0.5`: each path's last part, for job names and messages."""
    return " ".join(f"{p.rsplit('.', 1)[-1]}={_show(v)}" for p, v in combo.items())


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Run:
    """One job of a study: its cell (path -> value, as the validated spec holds it), seed and spec."""

    cell: dict[str, Any]
    seed: int
    spec: JobSpec


def check_axes(axes: Mapping[str, Sequence[Any]]) -> None:
    for path, values in axes.items():
        if path == SEED_PATH:
            raise StudyError(["axes", path], f"{SEED_PATH} is set by `seeds`, not as an axis")
        if path == NAME_PATH:  # the service names each job after its study, cell and seed
            raise StudyError(
                ["axes", path],
                "a job's name trains nothing, and a study names its jobs itself ('<study name> <cell> seed=<n>'); "
                "name the study and vary a training setting",
            )
        check_path(path)
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise StudyError(["axes", path], f"axis {path!r} needs a non-empty list of values")


def expand(
    base: Mapping[str, Any],
    seeds: int | Sequence[int],
    axes: Mapping[str, Sequence[Any]],
    max_jobs: int | None = None,
    limit_name: str | None = None,
) -> list[Run]:
    """Every combination of the axes (in their order, the last varying fastest) for every seed, each a
    validated JobSpec; StudyError names the first path, value or combination the spec refuses.
    `limit_name`: the setting behind `max_jobs`, named in its refusal."""
    setting = f" ({limit_name})" if limit_name else ""
    if max_jobs is not None and isinstance(seeds, int) and seeds > max_jobs:
        raise StudyError(["seeds"], f"{seeds} seeds make more jobs than the limit of {max_jobs}{setting}")
    seeds = seed_list(seeds)
    check_axes(axes)
    total = count_jobs(seeds, axes)
    if max_jobs is not None and total > max_jobs:
        shape = " x ".join([f"{len(seeds)} seeds", *(f"{len(v)} {p}" for p, v in axes.items())])
        raise StudyError(["axes"], f"the study has {total} jobs ({shape}), above the limit of {max_jobs}{setting}; "
                         "use fewer seeds or values")  # fmt: skip
    paths = list(axes)
    runs = []
    for values in itertools.product(*(axes[p] for p in paths)):
        combo = dict(zip(paths, values, strict=True))
        data = dict(base)
        for p, v in combo.items():
            data = set_path(data, p, v)
        for seed in seeds:
            try:
                spec = JobSpec.model_validate(set_path(data, SEED_PATH, seed))
            except ValidationError as e:
                raise _refusal(e, combo, seed) from e
            cell = {p: get_path(spec.model_dump(mode="json"), p) for p in paths}
            runs.append(Run(cell=cell, seed=seed, spec=spec))
    for p, values in normalized_axes(runs).items():
        if len(values) < len(axes[p]):  # two values the spec reads alike (1 and 1.0) would make one cell
            raise StudyError(["axes", p], f"axis {p!r} repeats a value: {list(axes[p])} are {values} in the spec")
    return runs


def _refusal(error: ValidationError, combo: Mapping[str, Any], seed: int) -> StudyError:
    err = error.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = error_message(err)
    label = combo_label(combo)
    context = f"combination {label} (seed {seed})" if label else f"seed {seed}"
    hits = [p for p in combo if where == p or where.startswith(p + ".") or p.startswith(where + ".")] if where else []
    if not hits and len(combo) == 1:  # the one axis is what changed the base spec
        hits = list(combo)
    if hits:
        return StudyError(["axes", hits[0]], f"{context}: {where or 'spec'}: {msg}")
    if combo:
        return StudyError(["axes"], f"{context}: {where or 'spec'}: {msg}")
    return StudyError(["spec", *err["loc"]], f"{context}: {msg}")


# --- statistics --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one job of the study gave: its cell and seed, and per student its summary (None unless it succeeded)."""

    cell: dict[str, Any]
    seed: int
    status: str
    students: list[dict[str, Any]] | None = None
    positions: int = 0  # students the spec has, so that a table has its rows before any result


def num_students(spec: Mapping[str, Any]) -> int:
    """Students of a spec dict as stored (the model's dump: every `count` present)."""
    return sum(int(s.get("count", 1)) for s in spec.get("students") or [])


@dataclass
class Comparison:
    n: int
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None


@dataclass
class MetricStats:
    n: int
    mean: float | None
    std: float | None
    vs_baseline: Comparison | None = None


@dataclass
class TableRow:
    cell: dict[str, Any]
    student: int
    jobs: int  # jobs of the cell
    succeeded: int
    metrics: dict[str, MetricStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cell": self.cell, "student": self.student, "jobs": self.jobs,
                               "succeeded": self.succeeded}  # fmt: skip
        for name, stats in self.metrics.items():
            d: dict[str, Any] = {"n": stats.n, "mean": stats.mean, "std": stats.std, "vs_baseline": None}
            if stats.vs_baseline is not None:
                d["vs_baseline"] = vars(stats.vs_baseline).copy()
            out[name] = d
        return out


def _key(cell: Mapping[str, Any]) -> str:
    return json.dumps(cell, sort_keys=True)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def describe(values: Sequence[float]) -> tuple[int, float | None, float | None]:
    """(n, mean, sample std with ddof=1); std is None below two values."""
    n = len(values)
    if n == 0:
        return 0, None, None
    mean = math.fsum(values) / n
    if n < 2:
        return n, mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return n, mean, math.sqrt(var)


def paired(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """Mean of a - b with its 95% t interval and the paired t-test's two-sided p-value; ci and p are None
    below two pairs. Differences that are all equal give a zero-width interval and no p-value."""
    from scipy import stats

    n = len(a)
    if n == 0:
        return Comparison(0, None, None, None, None)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n, mean, sd = describe(diffs)
    if n < 2 or sd is None or mean is None:
        return Comparison(n, mean, None, None, None)
    if sd <= 1e-12 * max(1.0, abs(mean)):  # equal up to rounding (scores are often multiples of 1/nodes)
        return Comparison(n, mean, mean, mean, None)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
    p = _finite(float(stats.ttest_rel(a, b).pvalue))
    return Comparison(n, mean, mean - half, mean + half, p)


def study_table(outcomes: Iterable[Outcome], cells: Sequence[Mapping[str, Any]] | None = None) -> list[TableRow]:
    """Rows per cell (in the order of `cells`, else of first appearance) and student position.

    Baseline of a cell: the cell with strategy 'none' and every other axis equal, when the study varies
    the strategy and has one; a cell is not compared with itself."""
    outcomes = list(outcomes)
    order: dict[str, dict[str, Any]] = {}
    for c in cells or []:
        order.setdefault(_key(c), dict(c))
    for o in outcomes:
        order.setdefault(_key(o.cell), dict(o.cell))
    by_cell: dict[str, list[Outcome]] = {k: [] for k in order}
    for o in outcomes:
        by_cell[_key(o.cell)].append(o)

    def values(key: str, student: int, metric: str) -> dict[int, float]:
        got = {}
        for o in by_cell.get(key, []):
            if o.status != JobStatus.SUCCEEDED or not o.students or student >= len(o.students):
                continue
            v = o.students[student].get(metric)
            if v is not None:
                got[o.seed] = float(v)
        return got

    rows = []
    for key, cell in order.items():
        jobs = by_cell[key]
        positions = max((max(o.positions, len(o.students or [])) for o in jobs), default=0)
        base_key = None
        if STRATEGY_PATH in cell and cell[STRATEGY_PATH] != BASELINE:
            candidate = _key({**cell, STRATEGY_PATH: BASELINE})
            base_key = candidate if candidate in order else None
        for student in range(positions):
            row = TableRow(cell=cell, student=student, jobs=len(jobs),
                           succeeded=sum(o.status == JobStatus.SUCCEEDED for o in jobs))  # fmt: skip
            for metric in METRICS:
                mine = values(key, student, metric)
                seeds = sorted(mine)
                n, mean, std = describe([mine[s] for s in seeds])
                stats = MetricStats(n, mean, std)
                if base_key is not None:
                    theirs = values(base_key, student, metric)
                    common = [s for s in seeds if s in theirs]
                    stats.vs_baseline = paired([mine[s] for s in common], [theirs[s] for s in common])
                row.metrics[metric] = stats
            rows.append(row)
    return rows


CSV_STATS = ("n", "mean", "std")
CSV_DIFF = ("n", "mean_diff", "ci_low", "ci_high", "p_value")


def table_csv(rows: Sequence[TableRow], paths: Sequence[str]) -> str:
    """One line per (cell, student): the axis values, then per metric its stats and the comparison."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [*paths, "student", "jobs", "succeeded"]
    for m in METRICS:
        header += [f"{m}_{s}" for s in CSV_STATS] + [f"{m}_vs_none_{s}" for s in CSV_DIFF]
    writer.writerow(header)
    for r in rows:
        line: list[Any] = [_csv(r.cell.get(p)) for p in paths] + [r.student, r.jobs, r.succeeded]
        for m in METRICS:
            stats = r.metrics[m]
            line += [_csv(getattr(stats, s)) for s in CSV_STATS]
            diff = stats.vs_baseline
            line += [_csv(getattr(diff, s)) if diff else "" for s in CSV_DIFF]
        writer.writerow(line)
    return buf.getvalue()


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | int):
        return value
    return json.dumps(value)
