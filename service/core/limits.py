"""What a job may ask for: sizes of datasets and models, epochs, and an estimate of its peak memory.

Checked at submission, before anything is stored; every refusal names the limit and the setting that
holds it (ALIGNAHEAD_<NAME>), and says what to change. The spec model's own bounds are the hard
ceiling of the format; these are the operator's, tuned to the machines the workers run on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignahead.parallel import Layout, ranks_for
from alignahead.runtime import RuntimeSettings
from alignahead.spec import JobSpec
from service.core import repository as repo
from service.core.errors import Invalid, TooLarge
from service.core.settings import Settings

if TYPE_CHECKING:
    from service.api.context import AppContext


@dataclass(frozen=True)
class GraphSize:
    """Totals over all graphs of a dataset, as loaded: edges directed, one self-loop per node included."""

    nodes: int
    edges: int
    features: int
    classes: int
    graphs: int


# Built-in datasets, as DGL ships them (edges directed, before self-loops are added).
BUILTIN_SIZES: dict[str, GraphSize] = {
    "ppi": GraphSize(56_944, 818_716 + 56_944, 50, 121, 24),
    "cora": GraphSize(2_708, 10_556 + 2_708, 1_433, 7, 1),
    "citeseer": GraphSize(3_327, 9_228 + 3_327, 3_703, 6, 1),
    "pubmed": GraphSize(19_717, 88_651 + 19_717, 500, 3, 1),
    "coauthor-cs": GraphSize(18_333, 163_788 + 18_333, 6_805, 15, 1),
    "coauthor-physics": GraphSize(34_493, 495_924 + 34_493, 8_415, 5, 1),
    "amazon-computers": GraphSize(13_752, 491_722 + 13_752, 767, 10, 1),
    "amazon-photo": GraphSize(7_650, 238_162 + 7_650, 745, 8, 1),
}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def synthetic_size(spec: JobSpec) -> GraphSize:
    s = spec.dataset.synthetic
    nodes = s.num_nodes * s.num_graphs
    return GraphSize(nodes, round(nodes * s.avg_degree) + nodes, s.num_features, s.num_classes, s.num_graphs)


def upload_size(summary: dict[str, Any]) -> GraphSize:
    return GraphSize(
        int(summary["num_nodes"]),
        int(summary["num_edges"]),
        int(summary["num_features"]),
        int(summary["num_classes"]),
        int(summary["num_graphs"]),
    )


def check_dataset(size: GraphSize, settings: Settings, loc: list[str | int]) -> None:
    """Nodes, edges, features and graphs of a synthetic or uploaded dataset."""
    for value, limit, what, setting in (
        (size.nodes, settings.max_nodes, "nodes", "MAX_NODES"),
        (size.edges, settings.max_edges, "edges (directed, with self-loops)", "MAX_EDGES"),
        (size.features, settings.max_features, "features per node", "MAX_FEATURES"),
        (size.graphs, settings.max_graphs, "graphs", "MAX_GRAPHS"),
    ):
        if value > limit:
            raise Invalid(
                loc,
                f"the dataset has {value:,} {what}, above the limit of {limit:,} (ALIGNAHEAD_{setting}); "
                "use a smaller dataset or ask the operator to raise the limit",
            )


def check_dense_features(size: GraphSize, settings: Settings) -> None:
    """An upload's features as the worker holds them (dense float32) against the unpacked-bytes cap:
    what the worker's loader would refuse is refused at upload (413)."""
    dense = 4 * size.nodes * size.features
    if dense > settings.max_unpacked_bytes:
        raise TooLarge(
            f"the features take {_gib(dense)} as a dense float32 matrix ({size.nodes:,} nodes x {size.features:,}), "
            f"above the limit of {_gib(settings.max_unpacked_bytes)} (ALIGNAHEAD_MAX_UNPACKED_BYTES); "
            "reduce the features or the nodes"
        )


def check_synthetic_bytes(spec: JobSpec, settings: Settings) -> None:
    """The generator's own size check (alignahead.datasets.make_synthetic), with the same cap the worker uses."""
    s = spec.dataset.synthetic
    need = s.num_graphs * s.num_nodes * (4 * s.num_features + 16 * s.avg_degree)
    if need > settings.max_unpacked_bytes:
        raise Invalid(
            ["body", "dataset", "synthetic"],
            f"the synthetic graphs would take {_gib(need)}, above the limit of "
            f"{_gib(settings.max_unpacked_bytes)} (ALIGNAHEAD_MAX_UNPACKED_BYTES); lower num_nodes, "
            "num_features, avg_degree or num_graphs",
        )


def check_model(spec: JobSpec, settings: Settings) -> None:
    """Students, depth, width and epochs."""
    if spec.num_students > settings.max_students:
        raise Invalid(
            ["body", "students"],
            f"the job has {spec.num_students} students, above the limit of {settings.max_students} "
            "(ALIGNAHEAD_MAX_STUDENTS); lower the students' `count`",
        )
    for i, st in enumerate(spec.students):
        if st.hidden_layers > settings.max_hidden_layers:
            raise Invalid(
                ["body", "students", i, "hidden_layers"],
                f"{st.hidden_layers} hidden layers is above the limit of {settings.max_hidden_layers} "
                "(ALIGNAHEAD_MAX_HIDDEN_LAYERS)",
            )
        width = hidden_width(st.arch, st.hidden_size, st.heads)
        if width > settings.max_width:
            raise Invalid(
                ["body", "students", i, "hidden_size"],
                f"a hidden layer of {width} units (hidden_size {st.hidden_size}"
                + (f" x {st.heads} heads" if st.arch == "gat" else "")
                + f") is above the limit of {settings.max_width} (ALIGNAHEAD_MAX_WIDTH); lower hidden_size or heads",
            )
    if spec.training.epochs > settings.max_epochs:
        raise Invalid(
            ["body", "training", "epochs"],
            f"{spec.training.epochs} epochs is above the limit of {settings.max_epochs} (ALIGNAHEAD_MAX_EPOCHS)",
        )


def hidden_width(arch: str, hidden_size: int, heads: int) -> int:
    return hidden_size * heads if arch == "gat" else hidden_size


def check_ranks(spec: JobSpec, settings: Settings) -> None:
    """A parallel job's ranks must fit the devices a worker offers."""
    ranks = spec.training.ranks
    if spec.training.parallel == "students" and ranks is not None and ranks > settings.worker_devices:
        raise Invalid(
            ["body", "training", "ranks"],
            f"training.ranks {ranks} is more than the {settings.worker_devices} device(s) a worker offers a job "
            "(ALIGNAHEAD_WORKER_DEVICES); lower ranks, or leave it unset for one rank per student up to that many",
        )


def estimate_bytes(spec: JobSpec, size: GraphSize, ranks: int = 1) -> int:
    """A deliberately generous estimate of a job's peak memory in the worker, in bytes (per rank of a
    parallel job: each holds the graph, every student's parameters, and its own group's passes).

    N nodes, E edges, F features, W a hidden layer's width, L hidden layers, C classes:
    - the graph: features 4NF, edge lists and DGL's sparse formats ~40E bytes; a multi-graph dataset
      also keeps batched copies for evaluation (x2);
    - per student, parameters with gradients and two Adam moments: 16 (FW + L W^2 + WC);
    - a training pass over one batch (the whole graph, or batch_size graphs of a multi-graph dataset),
      kept for backward: per layer ~6 node tensors (4NW each) and, for GAT, ~6 edge tensors per head
      (4E each); the local structure of each paired layer materialises an E x W difference with its
      gradient (~3 x 4EW). Alternating schedules hold one student's pass and one peer's forward (on
      one graph, up to ALIGNAHEAD_REUSE_FORWARD_MB of kept forwards instead), simultaneous ones every
      student's;
    - evaluation: a forward without gradients over the largest split (all train graphs batched).
    Checked against the peak RSS of real runs in tests/service/test_service_limits.py.
    """
    n, e, f, c = size.nodes, size.edges, size.features, size.classes
    data = 4 * n * f + 40 * e
    if size.graphs > 1:
        data *= 2
        share = min(spec.training.batch_size, size.graphs) / size.graphs
        n_batch, e_batch = n * share, e * share
        n_eval, e_eval = 0.7 * n, 0.7 * e
    else:
        n_batch, e_batch = n, e
        n_eval, e_eval = n, e
    paired = spec.distillation.strategy != "none"
    params = 0
    passes, evals = [], []
    for st in spec.expanded_students():
        w = hidden_width(st.arch, st.hidden_size, st.heads)
        out_heads = st.out_heads if st.arch == "gat" else 1
        heads = st.hidden_layers * st.heads + out_heads if st.arch == "gat" else 0
        params += 16 * (f * w + st.hidden_layers * w * w + w * c * out_heads)
        act = st.hidden_layers * 6 * 4 * n_batch * w + 6 * 4 * n_batch * c * out_heads + heads * 6 * 4 * e_batch
        if paired:
            act += st.hidden_layers * 3 * 4 * e_batch * w
        passes.append(act)
        evals.append(3 * 4 * n_eval * max(w, c * out_heads) + (3 * 4 * e_eval * st.heads if heads else 0))
    if ranks > 1:  # a rank holds its contiguous group's passes: the largest group's
        layout = Layout(len(passes), ranks)
        held = max(sum(passes[i] for i in layout.owned(r)) for r in range(ranks))
        return int(data + params + max(held, max(evals)) + 512 * 2**20)
    passes.sort(reverse=True)
    if spec.distillation.schedule == "simultaneous":
        held = sum(passes)
    else:  # one pass, plus one peer's forward or, with forward reuse, up to its budget of kept forwards
        kept = min(sum(passes[1:]), RuntimeSettings().reuse_forward_mb * 2**20) if size.graphs == 1 else 0
        held = passes[0] + max(sum(passes[1:2]), kept)
    overhead = 512 * 2**20  # the interpreter, torch and DGL themselves (~450 MiB resident here)
    return int(data + params + max(held, max(evals)) + overhead)


def check_memory(spec: JobSpec, size: GraphSize, settings: Settings) -> None:
    ranks = ranks_for(spec, settings.worker_devices)
    per_rank = estimate_bytes(spec, size, ranks)
    need = per_rank * ranks  # a worker's ranks share its memory
    if need > settings.worker_memory_bytes:
        each = f" ({ranks} ranks of {_gib(per_rank)})" if ranks > 1 else ""
        raise Invalid(
            ["body"],
            f"this job needs an estimated {_gib(need)} of memory{each}, above the "
            f"{_gib(settings.worker_memory_bytes)} a worker has (ALIGNAHEAD_WORKER_MEMORY_BYTES); use fewer or "
            "narrower students, fewer layers or a smaller graph",
        )


def check_spec(ctx: AppContext, tenant_id: str, spec: JobSpec) -> None:
    """What the spec model cannot know: the service reads no server paths, uploads must be the tenant's,
    and every size must be within the operator's limits, memory included. (POST /v1/jobs checks its
    spec, POST /v1/studies each of its cells.)"""
    settings = ctx.settings
    check_model(spec, settings)
    check_ranks(spec, settings)
    name = spec.dataset.name
    if name == "npz":
        raise Invalid(
            ["body", "dataset", "name"],
            "dataset 'npz' reads a file on the server and is not available over the API; upload the file "
            'with POST /v1/datasets and use {"name": "upload", "upload_id": <its id>}',
        )
    if name == "upload":
        with ctx.read() as s:
            summary = repo.upload_summary(s, tenant_id, spec.dataset.upload_id or "")
        if summary is None:
            raise Invalid(
                ["body", "dataset", "upload_id"],
                f"no uploaded dataset with id {spec.dataset.upload_id!r}; upload one with POST "
                "/v1/datasets (GET /v1/datasets lists them)",
            )
        size = upload_size(summary)
        check_dataset(size, settings, ["body", "dataset", "upload_id"])
    elif name == "synthetic":
        size = synthetic_size(spec)
        check_dataset(size, settings, ["body", "dataset", "synthetic"])
        check_synthetic_bytes(spec, settings)
    else:
        size = BUILTIN_SIZES[name]
    check_memory(spec, size, settings)
