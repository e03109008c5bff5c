"""The training loop: it learns, distils, checkpoints, cancels and resumes to the same numbers."""

from pathlib import Path

import pytest
import torch
from graphs import random_graph

from alignahead import JobSpec, load_student
from alignahead.datasets import GraphDataset, load_dataset
from alignahead.trainer import Callbacks, Checkpoint, History, Trainer, score

CORA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cora.npz"


def make_spec(**sections) -> JobSpec:
    base = {
        "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 300, "num_features": 16, "num_classes": 4}},
        "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 16}],
        "distillation": {"strategy": "alignahead", "tau": 10.0},
        "training": {"epochs": 20, "lr": 0.01, "device": "cpu", "seed": 3},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    return JobSpec.model_validate(base)


def dataset_for(spec: JobSpec) -> GraphDataset:
    return load_dataset(spec.dataset, seed=spec.training.seed)


@pytest.mark.parametrize("arch", ["gat", "gcn", "sage"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_training_lowers_the_loss_and_beats_chance(arch: str, schedule: str) -> None:
    spec = make_spec(
        students=[{"arch": arch, "count": 2, "hidden_layers": 2, "hidden_size": 16, "heads": 2}],
        distillation={"schedule": schedule},
    )
    history = History()
    result = Trainer(spec, dataset_for(spec), Callbacks(on_epoch=history)).run()
    assert not result.cancelled and result.epochs_done == 20
    assert len(history.rows) == 20 * 2
    for student in (0, 1):
        rows = [r for r in history.rows if r.student == student]
        assert rows[-1].task_loss < 0.5 * rows[0].task_loss
        assert rows[0].distill_loss > 0
    chance = 1 / 4
    for s in result.students:
        assert s.best_val > chance + 0.3 and s.test_at_best > chance + 0.3, s


def test_identical_students_have_zero_distillation_loss() -> None:
    spec = make_spec(distillation={"schedule": "simultaneous", "strategy": "one-to-one"}, training={"epochs": 5})
    trainer = Trainer(spec, dataset_for(spec), Callbacks(on_epoch=(history := History())))
    trainer.students[1].load_state_dict(trainer.students[0].state_dict())
    trainer.run()
    # same weights, same data, no dropout: they stay identical, layer l matches layer l exactly
    assert all(r.distill_loss == 0.0 for r in history.rows)
    # the same pair of students, initialised apart, do distil
    history2 = History()
    Trainer(spec, dataset_for(spec), Callbacks(on_epoch=history2)).run()
    assert all(r.distill_loss > 0.0 for r in history2.rows)


def test_alignahead_distils_across_layers_even_between_identical_students() -> None:
    spec = make_spec(distillation={"schedule": "simultaneous"}, training={"epochs": 1})
    trainer = Trainer(spec, dataset_for(spec), Callbacks(on_epoch=(history := History())))
    trainer.students[1].load_state_dict(trainer.students[0].state_dict())
    trainer.run()
    # layer l+1 learns the peer's layer l: different layers, so the loss is not zero
    assert all(r.distill_loss > 0.0 for r in history.rows)


def test_strategy_none_trains_independently() -> None:
    spec = make_spec(distillation={"strategy": "none"}, training={"epochs": 3})
    history = History()
    Trainer(spec, dataset_for(spec), Callbacks(on_epoch=history)).run()
    assert all(r.distill_loss == 0.0 and r.loss == r.task_loss for r in history.rows)


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_resumed_run_gives_the_same_numbers(schedule: str) -> None:
    # several graphs, minibatches and dropout: every source of randomness is in play
    spec = make_spec(
        dataset={"synthetic": {"num_nodes": 120, "num_features": 8, "num_classes": 3, "num_graphs": 8}},
        students=[{"arch": "gat", "count": 2, "hidden_layers": 2, "hidden_size": 8, "heads": 2, "dropout": 0.2}],
        distillation={"schedule": schedule},
        training={"epochs": 6, "batch_size": 2, "eval_every": 2},
    )
    dataset = dataset_for(spec)
    whole = History()
    straight = Trainer(spec, dataset, Callbacks(on_epoch=whole))
    straight.run()

    first = History()
    part = Trainer(spec, dataset, Callbacks(on_epoch=first))
    part.run(stop_after=3)
    state = part.state_bytes()
    torch.manual_seed(12345)  # whatever happens in between must not matter
    second = History()
    resumed = Trainer(spec, dataset, Callbacks(on_epoch=second))
    resumed.load_state_bytes(state)
    result = resumed.run()

    strip = lambda rows: [{**r.__dict__, "seconds": 0} for r in rows]  # noqa: E731
    assert strip(first.rows + second.rows) == strip(whole.rows)
    assert [s.__dict__ for s in result.students] == [s.__dict__ for s in straight.summaries]


def test_state_of_another_spec_is_refused() -> None:
    spec = make_spec(training={"epochs": 2})
    other = make_spec(training={"epochs": 2, "lr": 0.02})
    state = Trainer(spec, dataset_for(spec)).state_bytes()
    with pytest.raises(ValueError, match="different job spec"):
        Trainer(other, dataset_for(other)).load_state_bytes(state)


def test_checkpoints_reproduce_the_students() -> None:
    spec = make_spec(training={"epochs": 8})
    dataset = dataset_for(spec)
    saved: dict[tuple[int, str], Checkpoint] = {}
    trainer = Trainer(spec, dataset, Callbacks(on_checkpoint=lambda c: saved.__setitem__((c.student, c.kind), c)))
    result = trainer.run()
    graph = dataset.val[0]
    mask = graph.ndata["val_mask"]
    for i, summary in enumerate(result.students):
        best = saved[(i, "best")]
        assert best.epoch == summary.best_epoch and best.score == summary.best_val
        logits = load_student(best.data)(graph, graph.ndata["feat"])[0]
        num, den = score(logits[mask], graph.ndata["label"][mask], multilabel=False)
        assert num / den == summary.best_val
        final = load_student(saved[(i, "final")].data)
        assert torch.equal(final(graph, graph.ndata["feat"])[0], trainer.predict(i, graph))


def test_cancellation_stops_between_steps() -> None:
    spec = make_spec(training={"epochs": 50})
    calls = []

    def should_cancel() -> bool:
        calls.append(1)
        return len(calls) > 7  # 2 students x 1 step per epoch: stops inside epoch 4

    saved: list[Checkpoint] = []
    history = History()
    result = Trainer(spec, dataset_for(spec), Callbacks(history, saved.append, should_cancel)).run()
    assert result.cancelled and result.epochs_done == 3
    assert len(history.rows) == 3 * 2
    assert {c.kind for c in saved} == {"best"}


def test_multilabel_uses_micro_f1() -> None:
    torch.manual_seed(0)
    n, c = 200, 5
    g = random_graph(n, 1000, seed=0)
    g.ndata["label"] = (torch.rand(n, c) < 0.3).float()
    g.ndata["feat"] = g.ndata["label"] * 2 + torch.randn(n, c) * 0.3
    for split, part in zip(("train", "val", "test"), torch.arange(n).chunk(3), strict=True):
        m = torch.zeros(n, dtype=torch.bool)
        m[part] = True
        g.ndata[f"{split}_mask"] = m
    dataset = GraphDataset("ml", c, c, True, [g], [g], [g])
    spec = make_spec(training={"epochs": 30})
    result = Trainer(spec, dataset).run()
    assert all(s.best_val > 0.8 for s in result.students)
    logits = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # tp 2, fp 1, fn 0 -> f1 = 4/5
    num, den = score(logits, labels, multilabel=True)
    assert num / den == pytest.approx(0.8)


@pytest.mark.slow
@pytest.mark.skipif(not CORA.exists(), reason=f"the shared Cora graph is not at {CORA}")
def test_two_gcn_students_on_cora_reach_published_accuracy() -> None:
    spec = JobSpec.model_validate(
        {
            "dataset": {"name": "npz", "path": str(CORA)},
            "students": [
                {"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 64, "dropout": 0.5, "residual": False}
            ],
            "distillation": {"strategy": "alignahead", "alpha": 1.0},
            "training": {"epochs": 200, "lr": 0.01, "weight_decay": 5e-4, "device": "cpu", "seed": 0},
        }
    )
    result = Trainer(spec, dataset_for(spec)).run()
    tests = [s.test_at_best for s in result.students]
    assert sum(tests) / len(tests) >= 0.78, tests


@pytest.mark.parametrize("monitor", ["val_score", "val_loss"])
def test_patience_stops_when_no_student_improves(monitor: str) -> None:
    spec = make_spec(training={"epochs": 300, "patience": 5, "monitor": monitor})
    dataset = dataset_for(spec)
    history, saved = History(), []
    trainer = Trainer(spec, dataset, Callbacks(on_epoch=history, on_checkpoint=saved.append))
    result = trainer.run()
    stop = result.epochs_done
    assert not result.cancelled and stop < 300
    assert result.stop_reason and f"after epoch {stop} of 300" in result.stop_reason and monitor in result.stop_reason
    assert max(r.epoch for r in history.rows) == stop
    # every student went at least `patience` epochs without improving; the last improvement was exactly then
    assert max(m.epoch for m in trainer.monitors) == stop - 5
    if monitor == "val_score":
        for i in (0, 1):
            vals = [r.val_score for r in history.rows if r.student == i]
            best_epoch = 1 + vals.index(max(vals))
            assert trainer.monitors[i].epoch == best_epoch == result.students[i].best_epoch
            assert stop - best_epoch >= 5
    finals = {c.student: c for c in saved if c.kind == "final"}
    assert sorted(finals) == [0, 1] and all(c.epoch == stop for c in finals.values())


def test_early_stopping_resumes_to_the_same_stop() -> None:
    spec = make_spec(training={"epochs": 300, "patience": 4, "monitor": "val_loss"})
    dataset = dataset_for(spec)
    straight = Trainer(spec, dataset).run()
    part = Trainer(spec, dataset)
    part.run(stop_after=straight.epochs_done - 2)
    resumed = Trainer(spec, dataset)
    resumed.load_state_bytes(part.state_bytes())
    result = resumed.run()
    assert (result.epochs_done, result.stop_reason) == (straight.epochs_done, straight.stop_reason)
    assert [s.__dict__ for s in result.students] == [s.__dict__ for s in straight.students]


def test_without_patience_every_epoch_runs() -> None:
    spec = make_spec(training={"epochs": 40})
    result = Trainer(spec, dataset_for(spec)).run()
    assert result.epochs_done == 40 and result.stop_reason is None


def test_tau_auto_distils_where_a_fixed_tau_sees_nothing(caplog) -> None:
    # features of small magnitude: at tau 100 every edge weighs alike and the loss is nil
    def runs(tau: float | str) -> tuple[History, list[str]]:
        spec = make_spec(distillation={"tau": tau}, training={"epochs": 4})
        dataset = dataset_for(spec)
        dataset.train[0].ndata["feat"] = dataset.train[0].ndata["feat"] * 1e-3  # one graph: train is val is test
        history = History()
        caplog.clear()
        with caplog.at_level("WARNING", logger="alignahead.trainer"):
            Trainer(spec, dataset, Callbacks(history)).run()
        return history, [r.getMessage() for r in caplog.records if r.name == "alignahead.trainer"]

    flat, warnings = runs(100.0)
    assert max(r.distill_loss for r in flat.rows) < 1e-6
    assert len(warnings) == 1 and "distillation.tau" in warnings[0] and "first 3 epoch" in warnings[0]
    auto, warnings = runs("auto")
    assert min(r.distill_loss for r in auto.rows) > 1e-4
    assert warnings == []
