"""The browser pages: the dashboard at `/` and the API docs at `/docs` (Swagger UI) and `/redoc`.

Everything they load is served by this process from service/api/static (the docs bundles are vendored, see
static/vendor/README.md), because GPU clusters are often offline and a CDN is one more party to trust.
Each page carries a Content-Security-Policy that lets the browser fetch from this origin only, so a
hard-coded outside URL in a bundle (ReDoc's logo) is blocked before any network use. Relative URLs keep
the pages working behind a path prefix.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

from alignahead.enums import FINISHED, JobStatus
from service.api.schemas import MAX_COMPARE_JOBS

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
VENDOR = "static/vendor"
FAVICON = f"{VENDOR}/swagger-ui/favicon-32x32.png"
OPENAPI = "openapi.json"  # relative: /docs and /redoc sit next to it

# The dashboard: no inline script or style; data: for its empty favicon.
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# Both docs bundles set style attributes and insert <style> elements (React, styled-components), so styles
# need 'unsafe-inline'; scripts do not: the pages' one inline script is allowed by its hash. ReDoc runs its
# search index in a worker made from a blob: URL.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


class _Revalidated(StaticFiles):
    """Static files that a browser checks (ETag, a 304 when unchanged) before each use, so the dashboard's
    script is never a stale copy from before an upgrade."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def static_files() -> StaticFiles:
    """The dashboard's files and the vendored bundles, for `app.mount("/static", ...)`."""
    return _Revalidated(directory=STATIC_DIR)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    """`page` with a policy that allows its own inline scripts by their sha256 and nothing else inline."""
    body = bytes(page.body).decode()
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _INLINE_SCRIPT.findall(body)
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP.format(hashes=hashes)
    return page


@router.get("/", response_class=FileResponse)
def dashboard() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": DASHBOARD_CSP, "Cache-Control": "no-cache"},
    )


# The names the dashboard shares with the service, from their one definition (not spelt again in app.js).
NAMES_JS = (
    "// written by service/api/routes/pages.py from alignahead.enums and service.api.schemas\n"
    "window.ALIGNAHEAD_NAMES = "
    + json.dumps({"statuses": list(JobStatus), "finished": list(FINISHED), "maxCompareJobs": MAX_COMPARE_JOBS})
    + ";\n"
)


@router.get("/names.js")
def names_js() -> Response:
    return Response(
        NAMES_JS,
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui() -> HTMLResponse:
    return _with_csp(
        get_swagger_ui_html(
            openapi_url=OPENAPI,
            title="alignahead API",
            swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=FAVICON,
            # no badge from validator.swagger.io: the spec stays here
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc", response_class=HTMLResponse)
def redoc() -> HTMLResponse:
    return _with_csp(
        get_redoc_html(
            openapi_url=OPENAPI,
            title="alignahead API",
            redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=FAVICON,
            with_google_fonts=False,
        )
    )
