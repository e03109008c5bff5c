"""Students expose their hidden layers; checkpoints rebuild them exactly, as the same bytes every time."""

import hashlib
import subprocess
import sys

import pytest
import torch
from graphs import ring
from safetensors.torch import load as st_load

from alignahead import load_student, save_student
from alignahead.checkpoints import read_metadata, student_bytes
from alignahead.models import Student, StudentConfig


@pytest.mark.parametrize(("arch", "width"), [("gat", 8 * 3), ("gcn", 8), ("sage", 8)])
def test_forward_returns_logits_and_every_hidden_layer(arch: str, width: int) -> None:
    cfg = StudentConfig(arch=arch, in_feats=5, num_classes=4, hidden_layers=3, hidden_size=8, heads=3)
    logits, hidden = Student(cfg)(ring(), torch.randn(12, 5))
    assert logits.shape == (12, 4)
    assert [h.shape for h in hidden] == [(12, width)] * 3


def test_residual_off_changes_the_module() -> None:
    cfg = StudentConfig(arch="gcn", in_feats=5, num_classes=4, hidden_layers=2, hidden_size=8, residual=False)
    model = Student(cfg)
    assert all(r is None for r in model.residuals)


@pytest.mark.parametrize("arch", ["gat", "gcn", "sage"])
def test_checkpoint_reproduces_predictions_exactly(arch: str, tmp_path) -> None:
    torch.manual_seed(1)
    cfg = StudentConfig(arch=arch, in_feats=5, num_classes=3, hidden_layers=2, hidden_size=4, heads=2, dropout=0.3)
    model = Student(cfg).eval()
    g, x = ring(), torch.randn(12, 5)
    expected = model(g, x)[0]
    path = save_student(model, tmp_path / "s.safetensors")
    for source in (path, path.read_bytes()):
        loaded = load_student(source)
        assert loaded.config == cfg
        assert torch.equal(loaded(g, x)[0], expected)


def test_checkpoint_metadata_and_corruption() -> None:
    cfg = StudentConfig(arch="gcn", in_feats=2, num_classes=2, hidden_layers=1, hidden_size=3)
    data = student_bytes(Student(cfg), {"epoch": "7"})
    assert read_metadata(data)["epoch"] == "7"
    with pytest.raises(ValueError, match="safetensors"):
        load_student(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_student(data[: len(data) // 2])


SAVE_TWICE = """
import hashlib, torch
from alignahead.checkpoints import student_bytes
from alignahead.models import Student, StudentConfig
torch.manual_seed(0)
model = Student(StudentConfig(arch="gcn", in_feats=3, num_classes=2, hidden_layers=1, hidden_size=4))
extra = {f"key{i}": str(i) for i in range(12)}
print(*(hashlib.sha256(student_bytes(model, extra)).hexdigest() for _ in range(3)))
"""


def test_the_same_student_is_the_same_file_in_every_process() -> None:
    """safetensors writes its metadata in a hash map's order, which changes per save and per process;
    the header is rewritten sorted, so that runs compare by their checkpoints' sha256."""
    runs = [subprocess.run([sys.executable, "-c", SAVE_TWICE], capture_output=True, text=True, check=True)
            for _ in range(2)]  # fmt: skip
    hashes = [h for run in runs for h in run.stdout.split()]
    assert len(hashes) == 6 and len(set(hashes)) == 1, hashes
    torch.manual_seed(0)
    model = Student(StudentConfig(arch="gcn", in_feats=3, num_classes=2, hidden_layers=1, hidden_size=4))
    data = student_bytes(model, {f"key{i}": str(i) for i in range(12)})
    assert hashlib.sha256(data).hexdigest() == hashes[0]
    assert int.from_bytes(data[:8], "little") % 8 == 0  # the header stays padded as safetensors pads it
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in st_load(data).items())
    assert read_metadata(data)["key11"] == "11" and load_student(data).config == model.config
