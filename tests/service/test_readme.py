"""The README's quick start, run as written: `make run`'s service, then the quick start's blocks pasted
top to bottom into one shell.

The service is what `make run` starts (`python -m service.run_local`, embedded SQLite defaults, a key
made on first start in ./var/local-api-key), in a fresh folder that plays the repository root (the
examples and the environment, `.venv`, linked in). The only change to the snippets is the port in the
one line that names the service's address. A Python block is pasted into `python`, as a reader would.
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
# the sections the quick start runs through, in the README's order
QUICK_START = ("Submit a job", "Python client and CLI", "Studies")
ADDRESS = "export ALIGNAHEAD_URL=http://127.0.0.1:8000"


def blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced bash and python blocks of the section whose heading starts with
    `section`, in order."""
    text = README.read_text()
    start = text.index(f"\n## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```(bash|python)\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)


def quick_start_script(port: int) -> str:
    """The quick start as one shell session: bash blocks as they are, python ones fed to `python`."""
    parts = []
    for section in QUICK_START:
        for lang, code in blocks(section):
            parts.append(code if lang == "bash" else f"python - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK\n")
    script = "".join(parts)
    assert script.count(ADDRESS) == 1, "the address is set once, in the first block"
    return script.replace(ADDRESS, f"export ALIGNAHEAD_URL=http://127.0.0.1:{port}")


def _environment(folder: Path) -> None:
    """`.venv` in the folder: the environment running the tests (as `make run` leaves it at the root)."""
    if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").is_file():
        (folder / ".venv").symlink_to(sys.prefix)
        return
    # not a virtual environment (a system interpreter): an activate that puts it on the PATH, as one would
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    script = f"#!{sys.executable}\nfrom alignahead.cli import main\nraise SystemExit(main())\n"
    (bin_dir / "alignahead").write_text(script)
    (bin_dir / "alignahead").chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, dict[str, str]]]:
    """(the folder, the port, the environment) of a running `make run` service."""
    folder = tmp_path_factory.mktemp("quickstart")
    (folder / "examples").symlink_to(ROOT / "examples")
    _environment(folder)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNAHEAD_")}
    env.update(DGLBACKEND="pytorch", ALIGNAHEAD_TORCH_THREADS="1", PYTHONPATH=str(ROOT))
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


def test_the_quick_start_runs_top_to_bottom(quickstart: tuple[Path, int, dict[str, str]]) -> None:
    folder, port, env = quickstart
    assert f"export ALIGNAHEAD_URL=http://127.0.0.1:{port}" in (folder / "service.log").read_text()  # it says so
    script = quick_start_script(port)
    r = subprocess.run(["bash", "-euo", "pipefail"], input=script, cwd=folder, env=env, capture_output=True,
                       text=True, timeout=1200)  # fmt: skip
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout

    # the job by curl, its checkpoint, and the student on its graph
    runs = folder / "runs" / "quickstart"
    assert (runs / "student0.safetensors").stat().st_size > 1000  # a checkpoint, not an error body
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    assert 0.3 < accuracy <= 1.0  # 4 classes: better than chance after 30 epochs
    # the example graph, uploaded
    assert re.search(r'"id":"[0-9a-f]{32}".*"dataset_spec":\{"name":"upload"', out), out[-3000:]
    # the client: the listing names the job it submitted; the download is where the README says
    assert re.search(r"\['[0-9a-f]{32}'", out), out[-3000:]
    assert (runs / "student1-final.safetensors").stat().st_size > 1000
    # the CLI on the short id: status, download, upload
    assert "epoch 30/30" in out and (runs / "student1.safetensors").stat().st_size > 1000
    assert "use in a spec as" in out
    # the studies: curl's waited for and its table printed, the client's named after its spec
    header = "distillation.strategy,student,jobs"
    table = out[out.index(header) :].splitlines()
    assert [line.split(",")[:3] for line in table[1:5]] == [
        ["none", "0", "2"], ["none", "1", "2"], ["alignahead", "0", "2"], ["alignahead", "1", "2"]]  # fmt: skip
    assert "\nsynthetic-mixed\n" in out
    # what it wrote lies under runs/ (ignored by git) and var/ (make run's), nowhere else
    assert {p.name for p in folder.iterdir()} <= {"examples", ".venv", "runs", "var", "service.log"}
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "runs/" in ignored and "var/" in ignored


def test_make_run_takes_port_and_host() -> None:
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "run", "PORT=8123", "HOST=0.0.0.0"], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert re.search(r"-m service\.run_local --host 0\.0\.0\.0 --port 8123$", r.stdout, flags=re.M), r.stdout
    r = subprocess.run(["make", "-n", "-C", str(ROOT), "run"], capture_output=True, text=True, timeout=60)
    assert re.search(r"-m service\.run_local\s*$", r.stdout, flags=re.M), r.stdout  # the settings' defaults
