"""`alignahead study SPEC --seeds 5 --axis distillation.strategy=none,alignahead [--local] [--wait]`: a
study on the service (POST /v1/studies) or, with --local, run here one job after the other with the
library's trainer; either way the same table (alignahead.studies) printed with rich, or as JSON.
`alignahead study-status ID [--wait]` shows a service study's table again, `alignahead studies` lists
them. Scores in percent and their differences in percentage points, as the dashboard shows them.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from rich.markup import escape
from rich.table import Table

from alignahead import studies
from alignahead.client.cli import Output, _connection, cli_message
from alignahead.client.client import Client, spec_body
from alignahead.client.errors import AlignaheadError
from alignahead.client.progress import Progress
from alignahead.client.studies import Study
from alignahead.client.transport import RetryPolicy
from alignahead.enums import JobStatus

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _scalar(text: str) -> Any:
    """A YAML scalar, and 1e6 a float too (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and _NUMBER.match(value):
        return float(value)
    return value


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """`path=v1,v2,...` with each value a YAML scalar (0.5 and 1e6 are floats, none the string 'none', null None),
    or `path=[...]`, a YAML list, for values that hold commas."""
    path, sep, values = text.partition("=")
    path = path.strip()
    if not sep or not path or not values.strip():
        raise argparse.ArgumentTypeError(f"--axis {text!r}: write PATH=VALUE1,VALUE2 (e.g. distillation.alpha=0.5,1,2)")
    try:
        if values.strip().startswith("["):
            parsed = yaml.safe_load(values)
            if not isinstance(parsed, list):
                raise argparse.ArgumentTypeError(f"--axis {text!r}: {values!r} is not a list")
            return path, parsed
        return path, [_scalar(v.strip()) for v in values.split(",")]
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"--axis {text!r}: cannot read the values ({e})") from e


def parse_seeds(text: str) -> int | list[int]:
    """`5` (seeds 0..4) or `0,3,7`."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: a count (5) or a list (0,3,7)") from e


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    """A score, or a difference of scores, in percent (points): 0.8062 -> 80.6."""
    return "-" if value is None else f"{100 * value:.1f}"


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def render_table(rows: list[dict[str, Any]], paths: list[str], test: str = studies.TEST_NAME) -> Table:
    """The table as people read it: mean ± std over seeds, and the difference with the 'none' cell."""
    table = Table(title=f"study: scores in %, mean ± std over seeds; Δ vs strategy none in points, 95% CI, {test}")
    for p in paths:
        table.add_column(_short(p))
    table.add_column("student", justify="right")
    table.add_column("n", justify="right")
    for metric in studies.METRICS:
        table.add_column(metric.replace("_", " "), justify="right")
        table.add_column(f"Δ {metric.replace('_', ' ')} [95% CI]", justify="right")
        table.add_column("p", justify="right")
    for row in rows:
        cells = [escape(str(row["cell"].get(p))) for p in paths]
        line = [*cells, str(row["student"]), f"{row['test_at_best']['n']}/{row['jobs']}"]
        for metric in studies.METRICS:
            m = row[metric]
            spread = f" ± {_pct(m['std'])}" if m["std"] is not None else ""
            line.append(_pct(m["mean"]) + spread)
            vs = m.get("vs_baseline")
            if vs is None or vs["mean_diff"] is None:
                line += ["", ""]
                continue
            ci = f" [{_pct(vs['ci_low'])}, {_pct(vs['ci_high'])}]" if vs["ci_low"] is not None else ""
            sign = "+" if vs["mean_diff"] >= 0 else ""
            line += [f"{sign}{_pct(vs['mean_diff'])}{ci}", _num(vs["p_value"])]
        table.add_row(*line)
    return table


def _print(out: Output, rows: list[dict[str, Any]], paths: list[str], payload: dict[str, Any]) -> None:
    if out.as_json:
        out.json(payload)
    else:
        out.table(render_table(rows, paths))


def run_local(args: argparse.Namespace, spec: dict[str, Any], out: Output) -> int:
    """Every job of the study here, one after the other, with the library's trainer."""
    from alignahead.datasets import DatasetError, load_dataset
    from alignahead.runtime import set_torch_threads
    from alignahead.trainer import Callbacks, Trainer

    try:
        runs = studies.expand(spec, args.seeds, args.axes)
    except studies.StudyError as e:
        out.err.print(f"[red]error:[/] {'.'.join(map(str, e.loc))}: {escape(e.message)}")
        return 2
    set_torch_threads(args.threads)
    outcomes = []
    bar = Progress("study", "job", len(runs), 0, enabled=not (args.quiet or out.as_json), file=sys.stderr)
    for done, run in enumerate(runs):
        bar.advance_to(done)
        bar.show("running", f"{studies.combo_label(run.cell)} seed={run.seed}")
        try:
            dataset = load_dataset(run.spec.dataset, seed=run.spec.training.seed, data_dir=args.data_dir)
        except DatasetError as e:
            out.err.print(f"[red]error:[/] {escape(str(e))}")
            return 2
        result = Trainer(run.spec, dataset, Callbacks()).run()
        students = [asdict(s) for s in result.students]
        outcomes.append(studies.Outcome(run.cell, run.seed, JobStatus.SUCCEEDED, students, run.spec.num_students))
    bar.advance_to(len(runs))
    bar.show("done")
    bar.close()
    axes = studies.normalized_axes(runs)
    rows = [r.as_dict() for r in studies.study_table(outcomes, studies.cells(axes))]
    payload = {"axes": axes, "seeds": studies.seed_list(args.seeds), "test": studies.TEST_NAME,
               "confidence": studies.CONFIDENCE, "table": rows,
               "jobs": [{"cell": o.cell, "seed": o.seed, "students": o.students} for o in outcomes]}  # fmt: skip
    _print(out, rows, list(axes), payload)
    return 0


def _show_study(study: Study, args: argparse.Namespace, out: Output) -> int:
    if args.wait:
        try:
            study.wait(progress=not (args.quiet or out.as_json), file=sys.stderr)
        except KeyboardInterrupt:
            out.err.print(f"stopped waiting; study {study.id} goes on ([bold]alignahead study-status {study.id}[/])")
            return 130
    else:
        study.refresh()
    _print(out, study.data["table"], list(study.data["axes"]), study.data)
    if not out.as_json:
        counts = " ".join(f"{k}={v}" for k, v in study.counts.items() if v)
        out.err.print(f"study [bold]{study.id}[/]: {study.total} jobs ({counts})")
        if not study.done:
            out.err.print(f"follow it with: alignahead study-status {study.id} --wait")
    return 1 if study.done and study.counts.get(JobStatus.FAILED) else 0


def cmd_study(args: argparse.Namespace) -> int:
    out = Output(args.json)
    try:
        spec = spec_body(Path(args.spec), args.name)
    except (OSError, ValueError) as e:
        out.err.print(f"[red]error:[/] {escape(str(e))}")
        return 2
    args.axes = dict(args.axis or [])
    if args.local:
        return run_local(args, spec, out)
    try:
        with Client(args.url, args.api_key, retry=RetryPolicy(attempts=5)) as client:
            study = client.submit_study(spec, seeds=args.seeds, axes=args.axes, name=args.name)
            if not out.as_json:
                out.err.print(f"submitted study [bold]{study.id}[/] ({study.total} jobs)")
            return _show_study(study, args, out)
    except (AlignaheadError, OSError, ValueError) as e:
        out.err.print(f"[red]error:[/] {escape(cli_message(e, args))}")
        return 1


def cmd_study_status(args: argparse.Namespace) -> int:
    out = Output(args.json)
    try:
        with Client(args.url, args.api_key, retry=RetryPolicy(attempts=5)) as client:
            return _show_study(client.study(args.id), args, out)
    except (AlignaheadError, OSError, ValueError) as e:
        out.err.print(f"[red]error:[/] {escape(cli_message(e, args))}")
        return 1


def cmd_studies(args: argparse.Namespace) -> int:
    out = Output(args.json)
    try:
        with Client(args.url, args.api_key, retry=RetryPolicy(attempts=5)) as client:
            found = []
            for study in client.studies():
                found.append(study.data)
                if args.limit and len(found) >= args.limit:
                    break
    except (AlignaheadError, OSError, ValueError) as e:
        out.err.print(f"[red]error:[/] {escape(cli_message(e, args))}")
        return 1
    if out.as_json:
        out.json(found)
        return 0
    table = Table()
    table.add_column("id", no_wrap=True)
    for col in ("name", "jobs", "status", "created"):
        table.add_column(col)
    for st in found:
        counts = " ".join(f"{k}={v}" for k, v in (st.get("counts") or {}).items() if v)
        created = str(st.get("created_at", ""))[:16].replace("T", " ")
        table.add_row(st["id"], escape(st.get("name") or "-"), str(st.get("jobs", "-")), counts, created)
    out.table(table)
    if not found:
        out.err.print("no studies")
    return 0


def add_commands(sub: Any) -> None:
    common = [_connection()]
    text = "run a spec over seeds and a grid of values (on the service, or --local) and compare the cells"
    p = sub.add_parser("study", parents=common, help=text, description=text)
    p.add_argument("spec", help="the base job spec file (YAML or JSON)")
    p.add_argument("--seeds", type=parse_seeds, default=3, help="a count n (seeds 0..n-1) or a list 0,3,7 (default 3)")
    p.add_argument(
        "--axis",
        type=parse_axis,
        action="append",
        metavar="PATH=V1,V2",
        help="a spec path and its values, YAML scalars (none is the string, null is None); repeatable, e.g. "
        "--axis distillation.strategy=none,one-to-one,alignahead --axis distillation.alpha=0.5,1",
    )
    p.add_argument("--name", help="the study's name (default: the spec's name; its jobs are named after it)")
    p.add_argument("--local", action="store_true", help="run every job here, one after the other, not on the service")
    p.add_argument("--wait", action="store_true", help="wait for the service's jobs to finish, then print the table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--data-dir", default=None, help="--local: dataset cache folder (default $ALIGNAHEAD_DATA_DIR)")
    p.add_argument("--threads", type=int, default=None, help="--local: torch CPU threads")
    p.set_defaults(func=cmd_study)
    text = "a service study's job counts and results table"
    p = sub.add_parser("study-status", parents=common, help=text, description=text)
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="wait for its jobs to finish first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_study_status)
    text = "list the service's studies, newest first"
    p = sub.add_parser("studies", parents=common, help=text, description=text)
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")
    p.set_defaults(func=cmd_studies)
