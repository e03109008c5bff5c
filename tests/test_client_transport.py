"""The client's HTTP behaviour against scripted answers: retries, errors, the event stream, downloads.

Each test serves a small script of responses through httpx.MockTransport (or a closed local port) and
records the client's requests and the waits it chose, so no test sleeps.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from alignahead.client import (
    ChecksumMismatch,
    Client,
    Conflict,
    Job,
    NotFound,
    RateLimited,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)

URL = "http://svc.test"


class Script:
    """A MockTransport handler that answers from `routes` and logs every request."""

    def __init__(self, handler: Callable[[httpx.Request, int], httpx.Response]) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request, len(self.requests))


def make_client(handler: Callable[[httpx.Request, int], httpx.Response], attempts: int = 4, **kw: Any):
    waits: list[float] = []
    script = Script(handler)
    retry = RetryPolicy(attempts=attempts, backoff=0.5, sleep=waits.append)
    client = Client(URL, kw.pop("api_key", "k-123"), retry=retry, transport=httpx.MockTransport(script), **kw)
    return client, script, waits


def job_of(client: Client) -> Job:
    """A Job of job_json() without asking the server for it."""
    return Job(client._http, job_json())


def job_json(status: str = "running", epoch: int = 0, total: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "id": "j1",
        "name": "n",
        "status": status,
        "queue": "cpu",
        "progress": {"epoch": epoch, "total": total},
        "attempts": 1,
        "cancel_requested": False,
        "error": None,
        "students": [{"student": 0, "arch": "gcn", "best_val": None, "best_epoch": None, "test_at_best": None}],
        "spec": {"dataset": {"name": "synthetic"}},
        **extra,
    }


def metric(seq: int, epoch: int, student: int = 0, val: float = 0.5) -> dict[str, Any]:
    losses = {"loss": 1.0, "task_loss": 1.0, "distill_loss": 0.0, "seconds": 0.1}
    scores = {"train_score": 0.5, "val_score": val, "test_score": 0.4}
    return {"seq": seq, "epoch": epoch, "student": student, **losses, **scores, "created_at": "2026-01-01T00:00:00Z"}


def page(rows: list[dict[str, Any]], since: int) -> httpx.Response:
    """A metrics page as GET /v1/jobs/{id}/metrics answers it."""
    return httpx.Response(200, json={"job_id": "j1", "rows": rows, "next_since": rows[-1]["seq"] if rows else since})


# --- retries -----------------------------------------------------------------------------------


def test_5xx_then_success_is_retried_with_growing_backoff() -> None:
    client, script, waits = make_client(
        lambda r, n: httpx.Response(503 if n < 3 else 200, json={"detail": "busy"} if n < 3 else job_json())
    )
    assert client.job("j1").status == "running"
    assert len(script.requests) == 3
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0  # jittered 0.5 * 2^k


def test_429_waits_what_retry_after_says_seconds_or_date() -> None:
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}, json={"detail": "slow down"}),
        httpx.Response(429, headers={"Retry-After": date}, json={"detail": "slow down"}),
        httpx.Response(200, json=job_json()),
    ]
    client, script, waits = make_client(lambda r, n: answers[n - 1])
    client.job("j1")
    assert waits[0] == 7.0 and 25 <= waits[1] <= 30


def test_429_that_outlasts_the_retries_says_so() -> None:
    client, script, waits = make_client(
        lambda r, n: httpx.Response(429, headers={"Retry-After": "2"}, json={"detail": "3 jobs per minute at most"})
    )
    with pytest.raises(RateLimited) as e:
        client.submit({"dataset": {"name": "synthetic"}})
    assert e.value.retry_after == 2.0 and "3 jobs per minute" in str(e.value)
    assert len(script.requests) == 4 and waits == [2.0, 2.0, 2.0]


def test_submission_retries_carry_one_idempotency_key_and_the_bearer_key() -> None:
    client, script, _ = make_client(
        lambda r, n: httpx.Response(502 if n == 1 else 201, json={"detail": "bad gateway"} if n == 1 else job_json())
    )
    client.submit({"dataset": {"name": "synthetic"}}, name="mine")
    first, second = script.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] != ""
    assert first.headers["Authorization"] == "Bearer k-123"
    assert json.loads(second.content) == {"dataset": {"name": "synthetic"}, "name": "mine"}


def test_connection_errors_are_retried_then_reported() -> None:
    def refuse(request: httpx.Request, n: int) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client, script, waits = make_client(refuse)
    with pytest.raises(ServiceUnavailable, match="cannot reach the alignahead service at http://svc.test"):
        client.job("j1")
    assert len(script.requests) == 4 and len(waits) == 3


def test_a_closed_port_is_reported_after_the_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    waits: list[float] = []
    client = Client(f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=3, sleep=waits.append))
    with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{port}"):
        list(client.jobs())
    assert len(waits) == 2


def test_uploads_are_not_repeated_after_a_500_but_are_after_a_503(tmp_path: Path) -> None:
    f = tmp_path / "g.npz"
    f.write_bytes(b"data")
    client, script, _ = make_client(lambda r, n: httpx.Response(500, json={"detail": "boom"}))
    with pytest.raises(ServerError, match="boom"):
        client.upload_dataset(f)
    assert len(script.requests) == 1
    client, script, _ = make_client(
        lambda r, n: httpx.Response(503, json={"detail": "down"}) if n == 1 else httpx.Response(201, json={"id": "u"})
    )
    assert client.upload_dataset(f) == {"id": "u"} and len(script.requests) == 2
    assert b'filename="g.npz"' in script.requests[1].content


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "kind", "message", "fields"),
    [
        (404, {"detail": "no job with id 'x'"}, NotFound, "no job with id 'x'", []),
        (401, {"detail": "missing API key: send Authorization: Bearer KEY"}, Unauthorized, "missing API key", []),
        (409, {"detail": "job x is already succeeded"}, Conflict, "already succeeded", []),
        # the one error shape
        (
            422,
            {
                "detail": "training.epochs: too many",
                "errors": [{"loc": ["body", "training", "epochs"], "msg": "too many", "type": "v"}],
            },  # fmt: skip
            ValidationFailed,
            "training.epochs: too many",
            ["training.epochs"],
        ),
        # today's 422: a list under detail, a summary under message
        (
            422,
            {
                "detail": [{"loc": ["body", "x"], "msg": "unknown field 'x'", "type": "extra_forbidden"}],
                "message": "body.x: unknown field 'x'",
            },  # fmt: skip
            ValidationFailed,
            "body.x: unknown field 'x'",
            ["x"],
        ),
        # FastAPI's plain 422
        (
            422,
            {"detail": [{"loc": ["query", "limit"], "msg": "must be <= 1000", "type": "v"}]},
            ValidationFailed,
            "query.limit: must be <= 1000",
            ["query.limit"],
        ),
    ],
)
def test_4xx_carry_the_servers_message_and_are_not_retried(status, body, kind, message, fields) -> None:
    from alignahead.client.errors import where

    client, script, waits = make_client(lambda r, n: httpx.Response(status, json=body))
    with pytest.raises(kind) as e:
        client.job("x")
    assert message in str(e.value) and e.value.status_code == status
    assert [where(f) for f in e.value.errors] == fields
    assert len(script.requests) == 1 and waits == []


def test_an_error_body_that_is_not_json_still_gives_a_message() -> None:
    client, _, _ = make_client(lambda r, n: httpx.Response(400, text="bad request from a proxy"))
    with pytest.raises(Exception, match="bad request from a proxy"):
        client.job("x")


# --- the event stream --------------------------------------------------------------------------


def sse(*events: tuple[str, dict[str, Any], int | None]) -> bytes:
    out = [": keep-alive\n\n"]
    for name, data, ident in events:
        out.append(
            f"event: {name}\n" + (f"id: {ident}\n" if ident is not None else "") + f"data: {json.dumps(data)}\n\n"
        )
    return "".join(out).encode()


def dropping(chunk: bytes) -> Iterator[bytes]:
    yield chunk
    raise httpx.ReadError("connection reset by peer")


def test_events_resume_after_a_drop_with_last_event_id_and_pass_each_row_once() -> None:
    def handler(request: httpx.Request, n: int) -> httpx.Response:
        assert request.url.path == "/v1/jobs/j1/events"
        headers = {"content-type": "text/event-stream"}
        if n == 1:  # two rows, then the connection drops
            body = sse(("status", job_json(), None), ("metric", metric(1, 1), 1), ("metric", metric(2, 2), 2))
            return httpx.Response(200, headers=headers, content=dropping(body))
        if n == 2:  # the server repeats seq 2, sends 3, then closes cleanly before the end
            assert request.headers["Last-Event-ID"] == "2"
            return httpx.Response(
                200, headers=headers, content=sse(("metric", metric(2, 2), 2), ("metric", metric(3, 3), 3))
            )
        assert request.headers["Last-Event-ID"] == "3"
        return httpx.Response(200, headers=headers, content=sse(("status", job_json("succeeded", 3), None)))

    client, script, waits = make_client(handler)
    job = job_of(client)
    events = list(job.events())
    assert [(e.kind, e.data.get("seq")) for e in events] == [
        ("status", None), ("metric", 1), ("metric", 2), ("metric", 3), ("status", None)
    ]  # fmt: skip
    assert job.status == "succeeded" and len(script.requests) == 3
    assert "Last-Event-ID" not in script.requests[0].headers


def test_without_an_events_endpoint_the_client_polls() -> None:
    state = {"polls": 0}

    def handler(request: httpx.Request, n: int) -> httpx.Response:
        path = request.url.path
        if path.endswith("/events"):
            return httpx.Response(404, json={"detail": "Not Found"})
        if path == "/v1/jobs/j1":
            state["polls"] += 1
            return httpx.Response(200, json=job_json("succeeded" if state["polls"] >= 3 else "running", state["polls"]))
        if path == "/v1/jobs/j1/metrics":
            since = int(request.url.params["since"])
            rows = [metric(s, s) for s in range(1, state["polls"] + 1) if s > since]
            return page(rows, since)
        raise AssertionError(path)

    client, script, waits = make_client(handler)
    job = job_of(client)
    seqs = [e.data["seq"] for e in job.events(poll_interval=0.25) if e.kind == "metric"]
    assert seqs == [1, 2, 3] and job.status == "succeeded"
    # polls 1 (after the 404: does the job exist?), 2 and 3 (succeeded): one wait, none after the end
    assert waits == [0.25]
    # the client remembers: a second follow goes straight to polling
    before = len(script.requests)
    list(job_of(client).events())
    assert not any(r.url.path.endswith("/events") for r in script.requests[before:])


def test_events_of_a_missing_job_raise_not_found() -> None:
    client, _, _ = make_client(lambda r, n: httpx.Response(404, json={"detail": "no job with id 'j1'"}))
    with pytest.raises(NotFound, match="no job with id 'j1'"):
        list(job_of(client).events())


def test_wait_shows_epochs_and_best_scores(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    body = sse(
        ("status", job_json("running", 0), None),
        ("metric", metric(1, 1, val=0.61), 1),
        ("metric", metric(2, 2, val=0.72), 2),
        ("status", job_json("succeeded", 2, total=2), None),
    )

    def handler(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path == "/v1/jobs/j1":
            return httpx.Response(200, json=job_json("queued", 0, total=2))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    client, _, _ = make_client(handler)
    out = io.StringIO()  # a file, not a terminal: a few plain lines, not a line per refresh
    job = client.job("j1").wait(file=out)
    assert job.status == "succeeded"
    text = out.getvalue()
    assert "\r" not in text and len(text.splitlines()) <= 5, text
    assert text.splitlines()[-1] == "job j1: succeeded, epoch 2/2 (100 %), best val s0=72.0 %"
    assert "job j1: running, epoch 1/3 (33 %), best val s0=61.0 %" in text.splitlines()

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()  # a bar that redraws itself
    client.job("j1").wait(file=tty)
    assert "\r" in tty.getvalue() and "2/2" in tty.getvalue() and "best val s0=72.0 %" in tty.getvalue()


# --- downloads ---------------------------------------------------------------------------------


def checkpoint_server(contents: list[bytes], listed: list[bytes]) -> Callable[[httpx.Request, int], httpx.Response]:
    """Listings and downloads answered in turn from `listed` and `contents` (the last one repeats)."""
    calls = {"list": 0, "get": 0}

    def handler(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.endswith("/checkpoints"):
            data = listed[min(calls["list"], len(listed) - 1)]
            calls["list"] += 1
            entry = {"kind": "best", "epoch": 1, "score": 0.5, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "url": "/v1/jobs/j1/checkpoints/0/best"}  # fmt: skip
            return httpx.Response(
                200, json={"job_id": "j1", "students": [{"student": 0, "best": entry, "final": None}]}
            )
        data = contents[min(calls["get"], len(contents) - 1)]
        calls["get"] += 1
        return httpx.Response(200, content=data)

    return handler


def test_download_verifies_sha256_and_follows_a_replaced_best(tmp_path: Path) -> None:
    old, new = b"old weights" * 100, b"new weights" * 100
    # listed old, but the best was replaced before the download: the client re-reads the listing
    client, _, _ = make_client(checkpoint_server([new], [old, new]))
    path = job_of(client).download(path=tmp_path)
    assert path == tmp_path / "j1-student0-best.safetensors" and path.read_bytes() == new
    assert not list(tmp_path.glob("*.part"))


def test_download_of_corrupt_bytes_fails_and_leaves_no_file(tmp_path: Path) -> None:
    client, _, _ = make_client(checkpoint_server([b"garbage"], [b"weights"]))
    with pytest.raises(ChecksumMismatch, match="differs from the listed"):
        job_of(client).download(path=tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_download_restarts_after_a_dropped_connection(tmp_path: Path) -> None:
    data = b"w" * 5000
    calls = {"get": 0}
    listing = checkpoint_server([data], [data])

    def handler(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.endswith("/best"):
            calls["get"] += 1
            if calls["get"] == 1:
                return httpx.Response(200, content=dropping(data[:100]))
        return listing(request, n)

    client, _, waits = make_client(handler)
    path = job_of(client).download(path=tmp_path / "s.safetensors")
    assert path.read_bytes() == data and calls["get"] == 2 and len(waits) == 1


# --- metrics and logs ----------------------------------------------------------------------------


def test_metrics_page_through_every_row_and_need_pandas_only_for_a_dataframe(monkeypatch) -> None:
    rows = [metric(s, s) for s in range(1, 8)]

    def handler(request: httpx.Request, n: int) -> httpx.Response:
        since, limit = int(request.url.params["since"]), int(request.url.params["limit"])
        page = [r for r in rows if r["seq"] > since][:limit]
        return httpx.Response(
            200, json={"job_id": "j1", "rows": page, "next_since": page[-1]["seq"] if page else since}
        )

    client, script, _ = make_client(handler)
    got = job_of(client).metrics(page_size=3)
    assert [r["seq"] for r in got] == list(range(1, 8))
    assert [r.url.params["since"] for r in script.requests] == ["0", "3", "6"]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        got.as_dataframe()


def test_logs_and_a_service_without_them() -> None:
    lines = [{"created_at": "2026-01-01T00:00:00Z", "level": "INFO", "message": "job j1 starts"}]

    def handler(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.endswith("/logs"):
            return httpx.Response(200, json={"job_id": "j1", "lines": lines})
        return httpx.Response(200, json=job_json())

    client, _, _ = make_client(handler)
    assert job_of(client).logs() == lines
    client, _, _ = make_client(
        lambda r, n: (
            httpx.Response(404, json={"detail": "Not Found"})
            if r.url.path.endswith("/logs")
            else httpx.Response(200, json=job_json())
        )
    )
    with pytest.raises(NotFound, match="keeps no job logs"):
        job_of(client).logs()


def test_waits_time_out_even_when_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from alignahead.client import events as events_module

    def queued(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.endswith("/metrics"):
            return page([], 0)
        return httpx.Response(200, json=job_json("queued"))

    client, _, _ = make_client(queued)
    client._http.events_supported = False  # as after a 404 from /events
    with pytest.raises(TimeoutError, match="job j1 still queued when the wait timed out"):
        job_of(client).wait(progress=False, timeout=0)

    # on the stream: a quiet connection whose read times out after the deadline
    now = [0.0]
    monkeypatch.setattr(events_module, "time", SimpleNamespace(monotonic=lambda: now[0]))

    def quiet(body: bytes) -> Iterator[bytes]:
        yield body
        now[0] += 100
        raise httpx.ReadTimeout("no data")

    def running(request: httpx.Request, n: int) -> httpx.Response:
        body = sse(("status", job_json("running"), None))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=quiet(body))

    client, script, _ = make_client(running)
    with pytest.raises(TimeoutError, match="job j1 still running"):
        list(job_of(client).events(timeout=30))
    assert len(script.requests) == 1
