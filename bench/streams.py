"""Event streams: what open `GET /v1/jobs/{id}/events` streams cost the database and the API, 10 against 1,000.

    python bench/streams.py [--streams 10,1000] [--seconds 20] [--jobs 40] [--pollers 20] [--poll-rate 200]

PostgreSQL as bench/load.py builds it (`--jobs` finished jobs of 400 epochs x 2 students, plus 10
running jobs that gain an epoch's 2 rows 4 times a second, as workers would) and one API process
(uvicorn). For each count of streams in turn, a client process opens that many streams spread over
the 10 running jobs (each from a few rows before the job's last one, as a dashboard that opens), and
once every stream has had its first event reads them for `--seconds` while `--pollers` clients poll
jobs at `--poll-rate` requests/s in all; then it closes them. Measured over that window: the
database's transactions per second without the bench's own (`pg_stat_database.xact_commit` less the
grower's commits; each statement of the API's autocommit reads is one transaction), the API
process's CPU, its memory (RSS) per open stream, poll latency. Checked: every stream got every row of
its job after its start exactly once, in order. Prints the ratios of the last count to the first;
exit 1 if a stream lost or repeated a row. Target: queries/s at 1,000 streams within 1.5x those at 10.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "service"))  # the test suite's process helpers
sys.path.insert(0, str(ROOT))

from bench.load import Connection, grow, load_database, percentile, seed_history, start_api  # noqa: E402


async def follow(host: str, port: int, key: str, job_id: str, since: int, opened: asyncio.Event,
                 ready: list[int], stop: asyncio.Event) -> dict:  # fmt: skip
    """One stream, read until `stop`: the seqs of its metric events (HTTP/1.1 chunked, parsed by hand)."""
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"GET /v1/jobs/{job_id}/events?since={since} HTTP/1.1\r\nHost: {host}\r\n"
               f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n")  # fmt: skip
    writer.write(request.encode())
    seqs: list[int] = []
    result = {"job": job_id, "since": since, "seqs": seqs, "error": None}
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if head[9:12] != b"200":
            result["error"] = head[9:12].decode()
            return result
        buffer, first = b"", True
        reading = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            size_line = asyncio.ensure_future(reader.readuntil(b"\r\n"))
            await asyncio.wait([size_line, reading], return_when=asyncio.FIRST_COMPLETED)
            if not size_line.done():
                size_line.cancel()
                break
            size = int(size_line.result().strip(), 16)
            if size == 0:
                result["error"] = "closed"
                break
            buffer += (await reader.readexactly(size + 2))[:-2]
            *events, buffer = buffer.split(b"\r\n\r\n")
            for event in events:
                fields = dict(line.split(b": ", 1) for line in event.split(b"\r\n") if b": " in line)
                if fields.get(b"event") == b"metric":
                    seqs.append(int(fields[b"id"]))
                elif fields.get(b"event") == b"status" and first:
                    first = False
                    ready[0] += 1
                    if ready[0] == ready[1]:
                        opened.set()
                elif fields.get(b"event") == b"end":
                    result["error"] = "ended"
        reading.cancel()
    except (OSError, asyncio.IncompleteReadError) as e:
        result["error"] = type(e).__name__
    finally:
        writer.close()
    return result


def client_main(url: str, key: str, since: dict[str, int], streams: int, seconds: float, pollers: int,
                poll_rate: float, poll_jobs: list[str]) -> None:  # fmt: skip
    """The client (its own process): says `ready` when every stream had its first event, `done` after
    `seconds` more (streams still open), then prints one JSON line of results."""
    host, port = url.removeprefix("http://").split(":")
    jobs = list(since)

    async def poller(job_id: str, stop: asyncio.Event, latencies: list[float], errors: list[int],
                     offset: float) -> None:  # fmt: skip
        conn = Connection(host, int(port), key)
        interval = pollers / poll_rate
        nxt = time.perf_counter() + offset * interval
        while not stop.is_set():
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            nxt += interval
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request("GET", f"/v1/jobs/{job_id}")
            except (OSError, asyncio.IncompleteReadError):
                errors.append(1)
                continue
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors.append(status)

    async def run() -> dict:
        opened, stop, stop_polls = asyncio.Event(), asyncio.Event(), asyncio.Event()
        ready = [0, streams]
        t0 = time.perf_counter()
        tasks = []
        for i in range(streams):
            job = jobs[i % len(jobs)]
            tasks.append(asyncio.ensure_future(follow(host, int(port), key, job, since[job], opened, ready, stop)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # opened in waves, as users arrive
        await asyncio.wait_for(opened.wait(), timeout=300)
        open_seconds = time.perf_counter() - t0
        latencies: list[float] = []
        errors: list[int] = []
        polls = [asyncio.ensure_future(poller(poll_jobs[i % len(poll_jobs)], stop_polls, latencies, errors,
                                              i / pollers)) for i in range(pollers)]  # fmt: skip
        print("ready", flush=True)
        await asyncio.sleep(seconds)
        stop_polls.set()
        print("done", flush=True)
        await asyncio.gather(*polls)
        stop.set()
        results = await asyncio.gather(*tasks)
        return {"streams": results, "polls": latencies, "poll_errors": len(errors), "open_seconds": open_seconds}

    print(json.dumps(asyncio.run(run())), flush=True)


@dataclass
class Sample:
    commits: int
    grower: int
    cpu_seconds: float
    rss_bytes: int
    at: float


class Grower:
    """Appends an epoch's rows to each running job `rate` times a second, as workers would; counts its commits."""

    def __init__(self, url: str, running: list[str], rate: float = 4.0) -> None:
        self.url, self.running, self.rate = url, running, rate
        self.commits = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        grow(self.url, self.running, self.stop, self.rate, first_epoch=401, on_commit=self._count)

    def _count(self) -> None:
        self.commits += 1


def sample(conn, name: str, grower: Grower, pid: int) -> Sample:  # type: ignore[no-untyped-def]
    conn.execute("SELECT pg_stat_clear_snapshot()")
    commits = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()[0]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(x.split()[1]) * 1024 for x in Path(f"/proc/{pid}/status").read_text().splitlines()
               if x.startswith("VmRSS:"))  # fmt: skip
    return Sample(commits, grower.commits, cpu, rss, time.monotonic())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="10,1000", help="stream counts, measured in turn (comma-separated)")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--jobs", type=int, default=40, help="finished jobs of history")
    p.add_argument("--pollers", type=int, default=20)
    p.add_argument("--poll-rate", type=float, default=200, help="polling requests/s in all, while streams are open")
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(**json.loads(Path(args.client).read_text()))
        return 0

    import psycopg
    from svc_helpers import small_spec

    os.environ.setdefault("ALIGNAHEAD_COMPILE", "auto")  # the library's default (settings_env passes it on)
    folder = Path(tempfile.mkdtemp(prefix="streams-"))
    counts = [int(x) for x in args.streams.split(",")]
    with load_database("alignahead_streams") as (settings, key, tenant_id):
        url = settings.database_url
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        name = url.rsplit("/", 1)[1]
        finished, running = seed_history(url, tenant_id, args.jobs, 400, small_spec(epochs=10**4 - 1))
        api, port = start_api(settings)
        grower = Grower(plain, running)
        rows = []
        lost = repeated = 0
        try:
            grower.thread.start()
            monitor = psycopg.connect(plain, autocommit=True)
            poll_jobs = running + random.Random(0).sample(finished, min(len(finished), 10))
            for n in counts:
                with psycopg.connect(plain) as conn:
                    since = {jid: max(0, conn.execute("SELECT coalesce(max(id), 0) FROM metrics WHERE job_id = %s",
                                                      (jid,)).fetchone()[0] - 6) for jid in running}  # fmt: skip
                cfg = {"url": f"http://127.0.0.1:{port}", "key": key, "since": since, "streams": n,
                       "seconds": args.seconds, "pollers": args.pollers, "poll_rate": args.poll_rate,
                       "poll_jobs": poll_jobs}  # fmt: skip
                cfg_path = folder / f"client-{n}.json"
                cfg_path.write_text(json.dumps(cfg))
                before = sample(monitor, name, grower, api.pid)
                client = subprocess.Popen([sys.executable, __file__, "--client", str(cfg_path)], cwd=ROOT,
                                          stdout=subprocess.PIPE, text=True)  # fmt: skip
                assert client.stdout is not None
                assert client.stdout.readline().strip() == "ready", "the client could not open its streams"
                start = sample(monitor, name, grower, api.pid)
                assert client.stdout.readline().strip() == "done"
                end = sample(monitor, name, grower, api.pid)
                result = json.loads(client.stdout.readline())
                client.wait(timeout=120)
                time.sleep(2)  # the streams' readers stop; the next count starts from quiet
                # every row of the job after the stream's start, up to the last it got: once each, in order
                with psycopg.connect(plain) as conn:
                    for s in result["streams"]:
                        if not s["seqs"]:
                            continue
                        stored = [r[0] for r in conn.execute(
                            "SELECT id FROM metrics WHERE job_id = %s AND id > %s AND id <= %s ORDER BY id",
                            (s["job"], s["since"], s["seqs"][-1]))]  # fmt: skip
                        lost += len(set(stored) - set(s["seqs"]))
                        repeated += len(s["seqs"]) - len(set(s["seqs"]))
                wall = end.at - start.at
                api_tx = (end.commits - start.commits) - (end.grower - start.grower) - 3  # less the monitor's own
                errors = [s["error"] for s in result["streams"] if s["error"]]
                rows.append({
                    "streams": n,
                    "open_s": result["open_seconds"],
                    "queries_per_s": api_tx / wall,
                    "cpu_pct": 100 * (end.cpu_seconds - start.cpu_seconds) / wall,
                    "rss_per_stream_kib": (start.rss_bytes - before.rss_bytes) / n / 1024,
                    "rss_mib": start.rss_bytes / 2**20,
                    "events": sum(len(s["seqs"]) for s in result["streams"]),
                    "polls": len(result["polls"]),
                    "poll_p50": 1000 * percentile(result["polls"], 0.5),
                    "poll_p99": 1000 * percentile(result["polls"], 0.99),
                    "errors": len(errors) + result["poll_errors"],
                })  # fmt: skip
            monitor.close()
        finally:
            grower.stop.set()
            api.terminate()
            api.wait(timeout=30)

    load = os.getloadavg()
    print(f"streams: 1 API process, PostgreSQL, 10 running jobs gaining 8 rows/s each, {args.pollers} pollers at "
          f"{args.poll_rate:g} requests/s while streams are open; load average {load[0]:.1f} {load[1]:.1f} "
          "(other work on the machine)")  # fmt: skip
    print(f"{'streams':>8}{'open s':>8}{'queries/s':>11}{'API CPU %':>11}{'RSS MiB':>9}{'KiB/stream':>12}"
          f"{'rows sent':>11}{'poll p50':>10}{'poll p99':>10}{'errors':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['streams']:>8}{r['open_s']:>8.1f}{r['queries_per_s']:>11.1f}{r['cpu_pct']:>11.1f}{r['rss_mib']:>9.0f}"
              f"{r['rss_per_stream_kib']:>12.1f}{r['events']:>11}{r['poll_p50']:>10.1f}{r['poll_p99']:>10.1f}"
              f"{r['errors']:>8}")  # fmt: skip
    first, last = rows[0], rows[-1]
    ratio = last["queries_per_s"] / max(first["queries_per_s"], 1e-9)
    print(f"ratio {last['streams']} : {first['streams']} streams: database queries/s x{ratio:.2f} (target <= 1.5), "
          f"API CPU x{last['cpu_pct'] / max(first['cpu_pct'], 1e-9):.2f}; memory per stream "
          f"{last['rss_per_stream_kib']:.1f} KiB")  # fmt: skip
    print(f"rows lost: {lost}, repeated: {repeated} (over every stream)")
    return 0 if lost == 0 and repeated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
