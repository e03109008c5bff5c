"""Every example spec is a valid job spec, and the paper's example says what the paper did."""

from pathlib import Path

import pytest
import yaml

from alignahead import JobSpec

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_a_valid_spec(path: Path) -> None:
    JobSpec.model_validate(yaml.safe_load(path.read_text()))


def test_ppi_example_is_the_papers_setting() -> None:
    spec = JobSpec.model_validate(yaml.safe_load((EXAMPLES[0].parent / "ppi-gat-alignahead.yaml").read_text()))
    (student,) = spec.students
    assert spec.dataset.name == "ppi" and spec.num_students == 2
    assert (student.arch, student.hidden_layers, student.hidden_size, student.heads) == ("gat", 4, 64, 3)
    assert (spec.distillation.strategy, spec.distillation.alpha) == ("alignahead", 1.0)
    assert (spec.training.lr, spec.training.epochs, spec.training.batch_size) == (0.005, 300, 2)
