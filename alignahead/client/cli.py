"""The service commands of `alignahead`: submit, jobs, status, wait, metrics, cancel, delete, download,
logs, upload. Each talks to a service through `alignahead.client` (never its code).

URL and key come from --url/--api-key or $ALIGNAHEAD_URL/$ALIGNAHEAD_API_KEY. Output is a table for
people, JSON with --json for scripts; scores in percent, as the dashboard shows them. Errors print
the service's message, its hints for HTTP clients put in the CLI's words, and exit 1.

Exit codes: 0 when the command did what it says or its goal already held (`cancel` of a job that had
already finished: the job is not running either way, and the message says which); 1 when it could not
(unknown id, unreachable service, a refusal, a failed job waited for); 130 when Ctrl-C stopped waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alignahead import metrics
from alignahead.client.client import Client
from alignahead.client.errors import AlignaheadError, APIError, Conflict, ServiceUnavailable, Unauthorized
from alignahead.client.jobs import CHECKPOINT_KINDS, Job
from alignahead.client.progress import percent
from alignahead.client.transport import RetryPolicy
from alignahead.enums import JobStatus

STATUSES = tuple(JobStatus)
METRIC_COLUMNS = ("epoch", "student", *metrics.VALUES)
SCORE_COLUMNS = frozenset({"train_score", "val_score", "test_score"})
KEY_FILE = "var/local-api-key"  # where `make run` keeps the key of the tenant 'local'
KEY_HELP = (
    f"pass --api-key KEY or set ALIGNAHEAD_API_KEY (`make run` keeps the local tenant's key in {KEY_FILE}: "
    f"export ALIGNAHEAD_API_KEY=$(cat {KEY_FILE}))"
)
# the service's hints for HTTP clients, and the same in the CLI's words
CLI_WORDS = [
    (re.compile(r"list jobs with GET /v1/jobs"), "`alignahead jobs` lists them"),
    (re.compile(r"list studies with GET /v1/studies"), "`alignahead studies` lists them"),
    (re.compile(r"[Cc]ancel it first with POST /v1/jobs/(\w+)/cancel"), r"cancel it first: alignahead cancel \1"),
    (
        re.compile(r"upload one with POST /v1/datasets \(GET /v1/datasets lists them\)"),
        "upload one with `alignahead upload FILE`",
    ),  # fmt: skip
    (re.compile(r"see GET /v1/jobs/(\w+)/checkpoints"), r"`alignahead status \1` shows the job"),
]
STATUS_STYLE = {
    JobStatus.QUEUED: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "magenta",
}

Command = Callable[[Client, argparse.Namespace, "Output"], int]


class Output:
    """Tables on stdout for people, or JSON for scripts; messages on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False)
        if not self.out.is_terminal and "COLUMNS" not in os.environ:
            self.out = Console(highlight=False, width=160)  # piped: no terminal to fit, do not cut ids
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str))

    def json_line(self, value: Any) -> None:
        print(json.dumps(value, default=str), flush=True)

    def table(self, table: Table) -> None:
        self.out.print(table)

    def line(self, text: str) -> None:
        self.out.print(text, soft_wrap=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3e}" if value and abs(value) < 1e-3 else f"{value:.4f}"
    return escape(str(value))


def _score(value: float | None) -> str:
    return percent(value) if value is None or isinstance(value, int | float) else escape(str(value))


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _progress(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    return f"{p.get('epoch', 0)}/{p.get('total', '?')}"


def _job_table(job: Job) -> Table:
    d = job.data
    spec = job.spec
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("id", d["id"]),
        ("name", escape(d.get("name") or "-")),
        ("status", _status(d["status"]) + (" (cancel requested)" if d.get("cancel_requested") else "")),
        ("progress", f"epoch {_progress(d)}"),
        ("dataset", spec.dataset.name),
        ("queue", d.get("queue", "-")),
        ("attempts", str(d.get("attempts", "-"))),
        ("created", str(d.get("created_at") or "-")),
        ("started", str(d.get("started_at") or "-")),
        ("finished", str(d.get("finished_at") or "-")),
    ]
    if d.get("tags"):
        rows.insert(2, ("tags", escape(", ".join(d["tags"]))))
    if d.get("error"):
        rows.append(("error", f"[red]{escape(d['error'])}[/]"))
    for k, v in rows:
        table.add_row(k, v)
    return table


def _students_table(job: Job) -> Table:
    table = Table(title="students")
    for col in ("student", "arch", "best val", "best epoch", "test at best"):
        table.add_column(col, justify="right" if col != "arch" else "left")
    for s in job.students:
        table.add_row(
            str(s["student"]),
            s["arch"],
            _score(s.get("best_val")),
            _fmt(s.get("best_epoch")),
            _score(s.get("test_at_best")),
        )
    return table


def _metric_row(row: dict[str, Any]) -> list[str]:
    return [(_score if c in SCORE_COLUMNS else _fmt)(row.get(c)) for c in METRIC_COLUMNS]


def _metrics_table(rows: list[dict[str, Any]]) -> Table:
    table = Table()
    for c in METRIC_COLUMNS:
        table.add_column(c.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(*_metric_row(r))
    return table


# --- commands -------------------------------------------------------------------------------------


def _wait(job: Job, args: argparse.Namespace, out: Output) -> int:
    try:
        job.wait(progress=not args.quiet, raise_on_failure=False)
    except KeyboardInterrupt:
        out.err.print(f"stopped waiting; job {job.id} goes on ([bold]alignahead status {job.id}[/])")
        return 130
    if out.as_json:
        out.json(job.data)
    else:
        out.table(_job_table(job))
        out.table(_students_table(job))
    if job.status == JobStatus.FAILED:
        out.err.print(f"[red]job {job.id} failed:[/] {escape(job.error or '')}")
        return 1
    return 0


def cmd_submit(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.submit(args.spec, name=args.name)
    if args.wait:
        if not out.as_json:
            out.err.print(f"submitted job [bold]{job.id}[/]; waiting (Ctrl-C stops waiting, not the job)")
        return _wait(job, args, out)
    if out.as_json:
        out.json(job.data)
    else:
        out.line(f"submitted job [bold]{job.id}[/] ({_status(job.status)})")
        out.line(f"follow it with: alignahead wait {job.id}")
    return 0


def cmd_jobs(client: Client, args: argparse.Namespace, out: Output) -> int:
    jobs = []
    for job in client.jobs(status=args.status, name=args.name, tag=args.tag):
        jobs.append(job.data)
        if args.limit and len(jobs) >= args.limit:
            break
    if out.as_json:
        out.json(jobs)
        return 0
    table = Table()
    table.add_column("id", no_wrap=True)
    for col in ("name", "tags", "status", "progress", "created"):
        table.add_column(col)
    for j in jobs:
        created = str(j.get("created_at", ""))[:16].replace("T", " ")
        tags = escape(",".join(j.get("tags") or []) or "-")
        table.add_row(j["id"], escape(j.get("name") or "-"), tags, _status(j["status"]), _progress(j), created)
    out.table(table)
    if not jobs:
        out.err.print("no jobs" + (" matching" if args.status or args.name or args.tag else ""))
    return 0


def cmd_status(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.job(args.id)
    if out.as_json:
        out.json(job.data)
    else:
        out.table(_job_table(job))
        out.table(_students_table(job))
    return 0


def cmd_wait(client: Client, args: argparse.Namespace, out: Output) -> int:
    return _wait(client.job(args.id), args, out)


def cmd_metrics(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.job(args.id)
    if not args.follow:
        rows = job.metrics(student=args.student)
        if out.as_json:
            out.json(rows)
        else:
            out.table(_metrics_table(rows))
        return 0
    # follow: each row as it is stored, until the job ends
    if not out.as_json:
        out.line("  ".join(c.replace("_", " ") for c in METRIC_COLUMNS))
    try:
        for event in job.events():
            if event.kind == "metric" and (args.student is None or event.data["student"] == args.student):
                if out.as_json:
                    out.json_line(event.data)
                else:
                    out.line(
                        "  ".join(
                            f"{v:>{len(c)}}" for v, c in zip(_metric_row(event.data), METRIC_COLUMNS, strict=True)
                        )
                    )
            elif event.kind == "status" and not out.as_json:
                out.err.print(f"job {job.id}: {_status(event.data['status'])}, epoch {_progress(event.data)}")
    except KeyboardInterrupt:
        return 130
    return 1 if job.status == JobStatus.FAILED else 0


def cmd_cancel(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Exit 0 whenever the job ends up not running: cancelled now, stopping within its epoch, or already
    finished before (said so, with its status); 1 only where the command could not act."""
    job = client.job(args.id)
    already = job.done
    if not already:
        try:
            job.cancel()
        except Conflict:  # it finished between the two requests
            already = job.refresh().done
            if not already:
                raise
    if out.as_json:
        out.json(job.data)
    elif already:
        out.line(f"job {job.id} had already finished ({_status(job.status)}); nothing to cancel")
    elif job.status == JobStatus.RUNNING:
        out.line(f"job {job.id}: cancel requested; it stops within its current epoch")
    else:
        out.line(f"job {job.id}: {_status(job.status)}")
    return 0


def cmd_delete(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.job(args.id)  # the whole id, also when given its start
    job.delete()
    if out.as_json:
        out.json({"id": job.id, "deleted": True})
    else:
        out.line(f"job {job.id} deleted")
    return 0


def cmd_download(client: Client, args: argparse.Namespace, out: Output) -> int:
    job = client.job(args.id)
    path = job.download(student=args.student, kind=args.kind, path=args.output)
    if out.as_json:
        out.json({"id": job.id, "student": args.student, "kind": args.kind, "path": str(path)})
    else:
        out.line(f"saved student {args.student} ({args.kind}) of job {job.id} to {path} (sha256 verified)")
    return 0


def cmd_logs(client: Client, args: argparse.Namespace, out: Output) -> int:
    lines = client.job(args.id).logs()
    if out.as_json:
        out.json(lines)
        return 0
    for line in lines:
        stamp = str(line.get("created_at", ""))[:23].replace("T", " ")
        print(f"{stamp} {line.get('level', ''):<7} {line.get('logger', '')}: {line.get('message', '')}")
    return 0


def cmd_upload(client: Client, args: argparse.Namespace, out: Output) -> int:
    upload = client.upload_dataset(args.path)
    if out.as_json:
        out.json(upload)
    else:
        out.line(f"uploaded {escape(args.path)} as [bold]{upload['id']}[/]; use in a spec as")
        print(f"dataset: {json.dumps(upload['dataset_spec'])}")
    return 0


# --- wiring ---------------------------------------------------------------------------------------


def _connection() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("service")
    g.add_argument("--url", help="the service (default $ALIGNAHEAD_URL, else http://127.0.0.1:8000)")
    g.add_argument("--api-key", help="API key (default $ALIGNAHEAD_API_KEY)")
    g.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of tables")
    return common


def add_commands(sub: Any) -> None:
    """Add the service commands to the `alignahead` parser's subparsers."""
    common = [_connection()]

    def add(name: str, func: Command, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=common, help=text, description=text)
        p.set_defaults(func=run, command_func=func)
        return p

    p = add("submit", cmd_submit, "submit a job spec (YAML or JSON) to the service")
    p.add_argument("spec", help="job spec file")
    p.add_argument("--name", help="the job's name (overrides the spec's)")
    p.add_argument("--wait", action="store_true", help="wait for the job to end, showing progress")
    p.add_argument("--quiet", action="store_true", help="no progress bar while waiting")
    p = add("jobs", cmd_jobs, "list jobs, newest first")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--name", help="only jobs with exactly this name")
    p.add_argument("--tag", action="append", help="only jobs with this tag (repeat: jobs with all of them)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")
    p = add("status", cmd_status, "a job's status, progress and best scores")
    p.add_argument("id")
    p = add("wait", cmd_wait, "wait for a job to end, showing progress")
    p.add_argument("id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = add("metrics", cmd_metrics, "a job's per-epoch metrics")
    p.add_argument("id")
    p.add_argument("--student", type=int, help="only this student's rows")
    p.add_argument("--follow", "-f", action="store_true", help="print rows as they come until the job ends")
    p = add("cancel", cmd_cancel, "cancel a queued or running job")
    p.add_argument("id")
    p = add("delete", cmd_delete, "delete a finished job with its metrics and checkpoints")
    p.add_argument("id")
    p = add("download", cmd_download, "download a student's checkpoint (sha256 verified)")
    p.add_argument("id")
    p.add_argument("--student", type=int, default=0, help="student index (default 0)")
    p.add_argument("--kind", choices=CHECKPOINT_KINDS, default="best", help="best (default) or final")
    p.add_argument("-o", "--output", help="file or folder (default: ./<job>-student<N>-<kind>.safetensors)")
    p = add("logs", cmd_logs, "a job's log lines")
    p.add_argument("id")
    p = add("upload", cmd_upload, "upload an npz graph for jobs to train on")
    p.add_argument("path")


def cli_message(error: BaseException, args: argparse.Namespace) -> str:
    """An error as the CLI's user acts on it: flags, environment variables and the key file rather than
    HTTP headers and Python arguments; the service's own message kept, with its HTTP hints translated."""
    if isinstance(error, ServiceUnavailable) and error.url:
        return (f"cannot reach the alignahead service at {error.url} ({error.reason}); is it running "
                "(`make run`)? Give its address with --url URL or ALIGNAHEAD_URL")  # fmt: skip
    if isinstance(error, Unauthorized):
        if not (args.api_key or os.environ.get("ALIGNAHEAD_API_KEY")):
            return f"no API key given: {KEY_HELP}"
        source = "--api-key" if args.api_key else "ALIGNAHEAD_API_KEY"
        return f"{error.message} (HTTP {error.status_code}; the key came from {source})\n  {KEY_HELP}"
    text = str(error)
    if isinstance(error, APIError):
        for pattern, words in CLI_WORDS:
            text = pattern.sub(words, text)
    return text


def run(args: argparse.Namespace) -> int:
    out = Output(args.json)
    try:
        # fewer tries than the library default: a wrong URL is reported within seconds
        with Client(args.url, args.api_key, retry=RetryPolicy(attempts=5)) as client:
            return args.command_func(client, args, out)
    except (AlignaheadError, OSError, ValueError) as e:
        out.err.print(f"[red]error:[/] {escape(cli_message(e, args))}")
        return 1
