"""The README's quick start, run as written: `make run`'s service, then its shell and Python snippets.

The service is what `make run` starts (`python -m service.run_local`, embedded SQLite defaults, a key
made on first start in ./var/local-api-key), in a fresh folder that plays the repository root. The
only change to the snippets is the port: `localhost:8000` becomes the free port the test serves on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from svc_helpers import ROOT, free_port

README = ROOT / "README.md"


def blocks(section: str, lang: str) -> list[str]:
    """The fenced `lang` blocks of the README section whose heading starts with `section`."""
    text = README.read_text()
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(rf"```{lang}\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, dict[str, str]]]:
    """(the folder, the port, the environment) of a running `make run` service."""
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "examples").symlink_to(ROOT / "examples")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNAHEAD_")}
    env.update(DGLBACKEND="pytorch", ALIGNAHEAD_TORCH_THREADS="1", PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")  # fmt: skip
    log = (folder / "service.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "service.run_local", "--port", str(port)], cwd=folder, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # up when /readyz answers and the key file exists
            assert proc.poll() is None, (folder / "service.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (folder / "service.log").read_text()[-3000:]
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
                    and (folder / "var/local-api-key").exists()
                ):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield folder, port, env
    finally:
        proc.terminate()  # run_local stops its worker on the way out
        try:
            proc.wait(timeout=60)
        finally:
            log.close()
            try:  # whatever of its process group is left (nothing, when run_local stopped its worker)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(cmd: list[str], script: str, folder: Path, env: dict[str, str], port: int) -> str:
    script = script.replace("localhost:8000", f"localhost:{port}")
    out = subprocess.run(cmd, input=script, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_quick_start_shell_then_python(quickstart: tuple[Path, int, dict[str, str]]) -> None:
    folder, port, env = quickstart
    [shell] = blocks("Submit a job", "bash")[:1]
    [python] = blocks("Submit a job", "python")[:1]
    run(["bash", "-euo", "pipefail"], shell, folder, env, port)
    assert (folder / "student0.safetensors").stat().st_size > 1000  # a checkpoint, not an error body
    out = run([sys.executable, "-"], python, folder, env, port)
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert 0.3 < accuracy <= 1.0  # 4 classes: better than chance after 30 epochs


def test_python_client_snippet(quickstart: tuple[Path, int, dict[str, str]]) -> None:
    folder, port, env = quickstart
    key = (folder / "var/local-api-key").read_text().strip()  # the README: export ALIGNAHEAD_API_KEY=$(cat ...)
    client_env = {**env, "ALIGNAHEAD_API_KEY": key, "ALIGNAHEAD_URL": f"http://127.0.0.1:{port}"}
    [python] = blocks("Python client and CLI", "python")[:1]
    out = run([sys.executable, "-"], python, folder, client_env, port)
    assert re.search(r"\['[0-9a-f]{32}'", out), out  # the listing names the job it submitted
    assert list(folder.glob("*-student1-final.safetensors"))
