"""What the request-id and metrics middlewares add to one request, side by side.

    python bench/observability.py [--requests 20000] [--rounds 5]

The hottest request of the API is a poll answered by the polling fast path from memory, in tens of
microseconds; these middlewares wrap every request, that one included. So each is timed around an
ASGI app that answers at once: bare, inside `RequestIds` (always on), and inside `RequestIds` and
`RequestMetrics` (on with ALIGNAHEAD_METRICS_TOKEN), the route template found the way it is for a
fast-path answer (matching the real app's routes, the slow case). Rounds alternate the three so that
a machine loaded by other work loads them alike; the best round of each is printed, with the
microseconds each layer adds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def answer(scope: dict, receive: object, send: object) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"{}"})  # type: ignore[operator]


async def per_request(app: object, n: int) -> float:
    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_message: dict) -> None:
        return None

    headers = [(b"authorization", b"Bearer alh_x_y"), (b"x-request-id", b"bench-0001")]
    t0 = time.perf_counter()
    for i in range(n):
        scope = {"type": "http", "method": "GET", "path": f"/v1/jobs/{i:032x}", "query_string": b"",
                 "headers": headers, "root_path": ""}  # fmt: skip
        await app(scope, receive, send)  # type: ignore[operator]
    return (time.perf_counter() - t0) / n


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    from service.api.app import create_app
    from service.api.monitoring import ApiMetrics, JobGauges, RequestMetrics
    from service.core.logs import RequestIds
    from service.core.repository import JobTally
    from service.core.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="alignahead-bench-obs-"))
    settings = Settings(database_url=f"sqlite:///{folder / 'db.sqlite'}", broker_url=f"sqla+sqlite:///{folder / 'b'}",
                        auth_secret="bench")  # fmt: skip
    routes = create_app(settings).router.routes  # the real routes, for the template lookup
    metrics = ApiMetrics.build(JobGauges(lambda: JobTally([], None), 5.0), None)  # type: ignore[arg-type]
    apps = {
        "bare": answer,
        "request ids": RequestIds(answer),
        "request ids + metrics": RequestIds(RequestMetrics(answer, metrics=metrics, routes=routes)),
    }
    best = dict.fromkeys(apps, float("inf"))
    for _ in range(args.rounds):
        for name, app in apps.items():
            best[name] = min(best[name], asyncio.run(per_request(app, args.requests)))
    bare = best["bare"]
    print(f"{args.requests} requests x {args.rounds} rounds, best round per layer (microseconds per request):")
    for name, seconds in best.items():
        print(f"  {name:24s} {seconds * 1e6:7.2f} us   +{(seconds - bare) * 1e6:6.2f} us over bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
