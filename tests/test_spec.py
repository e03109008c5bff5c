"""Bad specs fail with a message that names the field, before any training starts."""

import pytest
from pydantic import ValidationError

from alignahead.spec import JobSpec


def test_defaults_are_the_papers_ppi_setting() -> None:
    spec = JobSpec()
    assert spec.dataset.name == "ppi"
    assert spec.num_students == 2
    s = spec.students[0]
    assert (s.arch, s.hidden_layers, s.hidden_size, s.heads) == ("gat", 4, 64, 3)
    assert (spec.distillation.strategy, spec.distillation.alpha, spec.distillation.tau) == ("alignahead", 1.0, 100.0)
    t = spec.training
    assert (t.lr, t.epochs, t.batch_size) == (0.005, 300, 2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": {"name": "imagenet"}}, "unknown dataset 'imagenet'"),
        ({"students": [{"arch": "mlp"}]}, "students.0.arch"),
        ({"students": [{"arch": "gcn", "count": 1}]}, "needs at least 2 students"),
        ({"students": [{"hidden_size": -4, "count": 2}]}, "students.0.hidden_size"),
        ({"students": [{"count": 0}]}, "students.0.count"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"lr": -1}}, "training.lr"),
        ({"distillation": {"strategy": "teacher"}}, "distillation.strategy"),
        ({"distillation": {"tau": 0}}, "distillation.tau"),
        ({"training": {"epoch": 3}}, "training.epoch"),  # a typo is not silently ignored
        ({"dataset": {"name": "npz"}}, "needs 'path'"),
        ({"dataset": {"name": "upload"}}, "needs 'upload_id'"),
        # pydantic reads true as 1: a boolean is not a number, nor a seed
        ({"training": {"seed": True}}, "not true or false"),
        ({"dataset": {"split": {"seed": False}}}, "dataset.split.seed"),
        ({"distillation": {"tau": True}}, "distillation.tau"),
        ({"dataset": {"split": {"seed": -1}}}, "dataset.split.seed"),
        (
            {"students": [{"arch": "gat", "hidden_layers": 2}, {"arch": "gcn", "hidden_layers": 3}]},
            "same 'hidden_layers'",
        ),
    ],
)
def test_bad_specs_are_rejected_with_a_clear_message(data: dict, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate(data)
    text = str(err.value)
    assert message in text or message in str([".".join(map(str, e["loc"])) for e in err.value.errors()])


def test_booleans_stay_booleans() -> None:
    spec = JobSpec.model_validate({"dataset": {"name": "cora", "largest_component": True},
                                   "students": [{"count": 2, "residual": False}]})  # fmt: skip
    assert spec.dataset.largest_component is True and spec.students[0].residual is False


def test_independent_training_allows_one_student_and_mixed_depths() -> None:
    JobSpec.model_validate({"students": [{"arch": "gcn"}], "distillation": {"strategy": "none"}})
    spec = JobSpec.model_validate(
        {
            "students": [{"arch": "gat", "hidden_layers": 2}, {"arch": "gcn", "hidden_layers": 3}],
            "distillation": {"strategy": "none"},
        }
    )
    assert [s.arch for s in spec.expanded_students()] == ["gat", "gcn"]


def test_count_unrolls_students() -> None:
    spec = JobSpec.model_validate({"students": [{"arch": "gat", "count": 2}, {"arch": "gcn", "hidden_layers": 4}]})
    assert [s.arch for s in spec.expanded_students()] == ["gat", "gat", "gcn"]
    assert all(s.count == 1 for s in spec.expanded_students())
