"""The job spec: the one pydantic model that the CLI, the API and the worker all accept.

Every section forbids unknown keys so that a typo fails loudly instead of training with a default.
The defaults reproduce the paper's PPI setting (Guo et al., IJCNN 2022).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Arch = Literal["gat", "gcn", "sage"]
Strategy = Literal["alignahead", "one-to-one", "none"]
Schedule = Literal["alternating", "simultaneous"]
Features = Literal["raw", "row-normalized"]
SmallClasses = Literal["drop", "error"]
Monitor = Literal["val_score", "val_loss"]
Precision = Literal["fp32", "bf16", "fp16"]
Parallel = Literal["none", "students"]

DATASET_NAMES = (
    "ppi",
    "coauthor-cs",
    "coauthor-physics",
    "amazon-computers",
    "amazon-photo",
    "cora",
    "citeseer",
    "pubmed",
    "npz",
    "synthetic",
    "upload",
)


# What seeds numpy, torch and DGL alike accept (numpy refuses negative ones), and the split's seed too.
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MAX_TAGS, MAX_TAG_CHARS = 16, 64
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/+=@-]*$"
Tag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS, pattern=TAG_PATTERN)]


def _is_number(annotation: Any) -> bool:
    """Whether a field's type takes an int or a float (also inside Annotated, a union or Optional)."""
    if annotation in (int, float):
        return True
    return any(_is_number(arg) for arg in typing.get_args(annotation) if arg is not type(None))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 for a number: `"seed": true` would train seed 1. A number is a number."""
        if isinstance(value, bool) and info.field_name and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("a number is needed here, not true or false")
        return value


class SplitSpec(_Section):
    """Per-class random split for single-graph datasets without a fixed split (Shchur et al. 2018):
    per class, `train_per_class` random labelled nodes train, `val_per_class` validate, all the
    remaining labelled nodes test; drawn after the largest component is taken, so it stays inside it."""

    train_per_class: int = Field(20, ge=1, le=100_000, description="Labelled training nodes drawn per class.")
    val_per_class: int = Field(30, ge=0, le=100_000, description="Validation nodes drawn per class.")
    seed: Seed | None = Field(None, description="Split seed, 0 to 2^31-1; defaults to training.seed.")
    small_classes: SmallClasses = Field(
        "drop",
        description="Classes with at most train_per_class + val_per_class labelled nodes, which would leave "
        "no test node: 'drop' removes their nodes from the graph (then takes the largest component "
        "again when dataset.largest_component is on), as Shchur et al. do for Cora-Full; 'error' refuses "
        "the dataset. Only for the random split (not for files with masks, nor synthetic graphs, "
        "whose counts shrink instead).",
    )


class SyntheticSpec(_Section):
    """A stochastic-block-model graph with class-correlated features, generated from a seed."""

    num_nodes: int = Field(600, ge=10, le=1_000_000, description="Nodes per graph.")
    num_classes: int = Field(4, ge=2, le=1000, description="Classes (blocks of the block model).")
    num_features: int = Field(32, ge=1, le=100_000, description="Input features per node.")
    avg_degree: float = Field(8.0, gt=0, le=1000, description="Expected edges per node.")
    homophily: float = Field(0.8, ge=0, le=1, description="Share of edges that stay inside a class.")
    feature_signal: float = Field(1.0, ge=0, le=100, description="Class-mean separation of features.")
    num_graphs: int = Field(
        1, ge=1, le=1000, description="1: one graph split by nodes; >=3: graphs split into train/val/test."
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> SyntheticSpec:
        if self.num_classes > self.num_nodes:
            raise ValueError(f"num_classes ({self.num_classes}) exceeds num_nodes ({self.num_nodes}), nodes per graph")
        if self.num_graphs == 2:
            raise ValueError("num_graphs 2 cannot fill train, val and test; use 1 or at least 3")
        return self


class DatasetSpec(_Section):
    name: str = Field(
        "ppi",
        description="A registry name (see `alignahead datasets`), 'npz' with a path, "
        "'upload' with an upload_id (service), or 'synthetic'.",
    )
    path: str | None = Field(None, description="npz file in the GNN-benchmark layout (name 'npz').")
    upload_id: str | None = Field(None, description="An uploaded dataset's id (name 'upload').")
    features: Features | None = Field(
        None,
        description="'row-normalized': each node's features divided by the sum of their absolute values "
        "(bag-of-words rows sum to 1; all-zero rows stay zero), as Kipf & Welling and Velickovic et al. "
        "do; 'raw': as stored. None: the dataset's default, 'row-normalized' for the bag-of-words "
        "graphs (cora, citeseer, pubmed, coauthor-*, amazon-*, npz, upload), 'raw' for ppi and synthetic.",
    )
    largest_component: bool | None = Field(
        None,
        description="Keep only the largest connected component of a single graph (Shchur et al. evaluate "
        "there); the split is drawn inside it and a file's masks are cut to it. None: the dataset's "
        "default, on for coauthor-*, amazon-* and single-graph npz/upload files without masks; off for "
        "the Planetoid public splits (cora, citeseer, pubmed), files with masks, synthetic graphs and "
        "multi-graph data, where it is refused.",
    )
    split: SplitSpec = Field(
        SplitSpec(), description="The random per-class split, for single graphs that come without one."
    )
    synthetic: SyntheticSpec = Field(SyntheticSpec(), description="The generated graph (name 'synthetic').")

    @model_validator(mode="after")
    def _check_source(self) -> DatasetSpec:
        if self.name not in DATASET_NAMES:
            hint = did_you_mean(self.name, DATASET_NAMES)
            raise ValueError(f"unknown dataset {self.name!r}{hint} (the names: {', '.join(DATASET_NAMES)})")
        if self.name == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs 'path' (a .npz file in the GNN-benchmark layout)")
        if self.name != "npz" and self.path:
            raise ValueError("'path' is only for dataset 'npz'")
        if self.name == "upload" and not self.upload_id:
            raise ValueError(
                "dataset 'upload' needs 'upload_id', the id an upload returns (`alignahead upload FILE`, "
                "client.upload_dataset or POST /v1/datasets)"
            )
        if self.name != "upload" and self.upload_id:
            raise ValueError("'upload_id' is only for dataset 'upload'")
        if self.largest_component and (
            self.name == "ppi" or (self.name == "synthetic" and self.synthetic.num_graphs > 1)
        ):
            raise ValueError(
                "'largest_component' applies to single-graph datasets; "
                f"{'ppi' if self.name == 'ppi' else 'synthetic with num_graphs > 1'} has several graphs"
            )
        return self


class StudentSpec(_Section):
    arch: Arch = Field("gat", description="The GNN: 'gat', 'gcn' or 'sage' (GraphSAGE).")
    count: int = Field(1, ge=1, le=16, description="How many students of this configuration.")
    hidden_layers: int = Field(4, ge=1, le=32, description="Hidden layers; the output layer comes on top.")
    hidden_size: int = Field(64, ge=1, le=8192, description="Units per hidden layer (per head for GAT).")
    heads: int = Field(3, ge=1, le=64, description="GAT attention heads in hidden layers.")
    out_heads: int = Field(3, ge=1, le=64, description="GAT heads in the output layer, averaged.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Feature dropout before every layer.")
    attn_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="GAT only: dropout on the attention coefficients (Velickovic et al.: 0.6)."
    )
    residual: bool = Field(
        True, description="A skip connection around every layer (a linear projection where widths differ)."
    )
    aggregator: Literal["mean", "gcn", "pool", "lstm"] = Field("mean", description="GraphSAGE only.")


class DistillationSpec(_Section):
    strategy: Strategy = Field(
        "alignahead",
        description="'alignahead': a student's hidden layer l+1 learns the local structure of its peers' layer l, "
        "and its first layer that of their last (a cycle); 'one-to-one': layer l from the peers' layer l; 'none': "
        "each student trains alone.",
    )
    alpha: float = Field(1.0, ge=0.0, le=1e6, description="Weight of the distillation loss.")
    tau: Annotated[float, Field(gt=0.0, le=1e9)] | Literal["auto"] = Field(
        100.0,
        description="Bandwidth of the local-structure kernel exp(-||h_u - h_v||_1 / tau): a number (the paper's "
        "100), or 'auto': per layer pair and graph, the median of the peer layer's edge distances, so that the "
        "kernel separates edges whatever the scale of the features (a fixed tau far above or below the "
        "distances makes every distribution uniform and the distillation loss zero).",
    )
    schedule: Schedule = Field(
        "alternating",
        description="'alternating': each student in turn steps over all batches (the paper's code); "
        "'simultaneous': all students step once per batch against detached peers.",
    )


class TrainingSpec(_Section):
    epochs: int = Field(300, ge=1, le=100_000, description="Epochs to train (fewer with `patience`).")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="One optimizer per student.")
    lr: float = Field(0.005, gt=0.0, le=10.0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 penalty (decoupled for 'adamw').")
    batch_size: int = Field(2, ge=1, le=100_000, description="Graphs per step (multi-graph datasets).")
    eval_every: int = Field(1, ge=1, le=100_000, description="Evaluate every n epochs (and at the last).")
    seed: Seed = Field(0, description="Seeds weights, dropout and the data it generates or splits (0 to 2^31-1).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes CUDA when present.")
    precision: Precision = Field(
        "fp32",
        description="The students' arithmetic: 'fp32'; 'bf16' or 'fp16' run their layers under autocast (fp16 with "
        "loss scaling; CUDA only), while the local structure, the KL and the task loss stay in float32.",
    )
    patience: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Early stopping: stop once no student's monitored validation metric has improved for this "
        "many epochs (the job still succeeds and writes its 'final' checkpoints). None: train every epoch.",
    )
    monitor: Monitor = Field(
        "val_score",
        description="Which validation metric picks a student's best epoch (its 'best' checkpoint and the test "
        "score reported there) and what `patience` watches: 'val_score' (higher is better) or 'val_loss' (the task "
        "loss on the validation nodes, lower is better; Shchur et al.'s rule).",
    )
    parallel: Parallel = Field(
        "none",
        description="'none': every student in this process; 'students': one process per rank, each training a "
        "contiguous group of the students on its own device (CPU slot or GPU), exchanging only their detached "
        "peer-layer distributions each step (alignahead.parallel). Needs distillation.schedule 'simultaneous'; "
        "the numbers are those of the one-process run.",
    )
    ranks: int | None = Field(
        None,
        ge=1,
        le=16,
        description="With parallel 'students': how many processes (at most one per student). None: one per "
        "student, up to the devices on offer (a service worker's ALIGNAHEAD_WORKER_DEVICES).",
    )


class JobSpec(_Section):
    """What to train: one dataset, k students, a distillation strategy and a training recipe."""

    name: str | None = Field(
        None, max_length=200, description="A name to find the job by (`GET /v1/jobs?name=`, exact); need not be unique."
    )
    tags: list[Tag] = Field(
        default_factory=list,
        max_length=MAX_TAGS,
        description=f"Labels to group jobs by (`GET /v1/jobs?tag=`): at most {MAX_TAGS}, each 1 to {MAX_TAG_CHARS} "
        "letters, digits and `_.:/+=@-`, starting with a letter or digit; no repeats.",
    )
    dataset: DatasetSpec = Field(DatasetSpec(), description="What to train on.")
    students: Annotated[list[StudentSpec], Field(min_length=1, max_length=16)] = Field(
        [StudentSpec(count=2)], description="The students, trained together; `count` repeats a configuration."
    )
    distillation: DistillationSpec = Field(DistillationSpec(), description="How the students learn from each other.")
    training: TrainingSpec = Field(TrainingSpec(), description="The training recipe, shared by every student.")

    @field_validator("tags")
    @classmethod
    def _tags_once(cls, tags: list[str]) -> list[str]:
        repeated = sorted({t for t in tags if tags.count(t) > 1})
        if repeated:
            raise ValueError(f"tags repeat {', '.join(map(repr, repeated))}; list each tag once")
        return tags

    @model_validator(mode="after")
    def _check_students(self) -> JobSpec:
        k = self.num_students
        if k > 16:
            raise ValueError(f"at most 16 students per job; got {k}")
        if self.distillation.strategy != "none":
            if k < 2:
                raise ValueError(
                    f"strategy {self.distillation.strategy!r} needs at least 2 students (got {k}); "
                    "raise a student's 'count' or use strategy 'none'"
                )
            depths = sorted({s.hidden_layers for s in self.students})
            if len(depths) > 1:
                raise ValueError(
                    f"strategy {self.distillation.strategy!r} pairs layers across students, so every "
                    f"student needs the same 'hidden_layers' (got {depths}); widths and architectures "
                    "may differ"
                )
        return self

    @model_validator(mode="after")
    def _check_precision(self) -> JobSpec:
        if self.training.precision == "fp16" and self.training.device == "cpu":
            raise ValueError(
                "training.precision 'fp16' needs a CUDA device (training.device 'cuda' or 'auto'); on the CPU use "
                "'bf16' or 'fp32'"
            )
        return self

    @model_validator(mode="after")
    def _check_parallel(self) -> JobSpec:
        t = self.training
        if t.parallel == "none":
            if t.ranks is not None:
                raise ValueError("training.ranks applies to training.parallel 'students'; set parallel or drop ranks")
            return self
        if self.distillation.schedule == "alternating":
            raise ValueError(
                "training.parallel 'students' needs distillation.schedule 'simultaneous': the 'alternating' "
                "schedule is sequential by definition (each student learns from its peers' weights after their "
                "pass), so its students cannot train side by side"
            )
        if t.ranks is not None and t.ranks > self.num_students:
            raise ValueError(
                f"training.ranks {t.ranks} is more than the {self.num_students} students: a rank trains at least "
                "one student"
            )
        return self

    @property
    def num_students(self) -> int:
        return sum(s.count for s in self.students)

    def expanded_students(self) -> list[StudentSpec]:
        """One entry per student, `count` unrolled."""
        return [s.model_copy(update={"count": 1}) for s in self.students for _ in range(s.count)]

    @classmethod
    def from_data(cls, data: Any) -> JobSpec:
        return cls.model_validate(data)


# --- field errors in the spec's words -------------------------------------------------------------
# One rule for every place that validates a spec (the API, the CLI, studies, the dashboard's form via
# the API): an unknown field names the closest known one, and pydantic's own prefixes are left out.

PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'hidden_size'?` for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (also inside Annotated or a union), or None."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = submodel(arg)
            if model is not None:
                return model
    return None


def list_item_model(annotation: Any) -> type[BaseModel] | None:
    """StudentSpec for `list[StudentSpec]` (possibly Annotated)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is list:
        return submodel(typing.get_args(annotation)[0])
    return None


def model_at(loc: Sequence[str | int], root: type[BaseModel] = JobSpec) -> type[BaseModel] | None:
    """The section that holds the field at `loc` (its last part; list indexes skipped), or None."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int) or str(part).isdigit():
            continue
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[str(part)].annotation
        model = list_item_model(annotation) or submodel(annotation)
    return model


def error_message(error: Mapping[str, Any], root: type[BaseModel] | None = JobSpec) -> str:
    """One pydantic field error (`ValidationError.errors()` item, loc relative to `root`) as a sentence
    that says what to fix."""
    loc = list(error.get("loc") or ())
    if error.get("type") == "extra_forbidden" and loc:
        model = model_at(loc, root) if root is not None else None
        if model is None:
            return f"unknown field {loc[-1]!r}; remove it or check its spelling"
        fields = list(model.model_fields)
        hint = did_you_mean(str(loc[-1]), fields)
        return f"unknown field {loc[-1]!r}" + (hint or f"; the fields here are {', '.join(fields)}")
    msg = str(error.get("msg", ""))
    for prefix in PYDANTIC_PREFIXES:
        msg = msg.removeprefix(prefix)
    return msg


def error_lines(errors: Iterable[Mapping[str, Any]], root: type[BaseModel] | None = JobSpec) -> list[str]:
    """`students.0.hiden_size: unknown field 'hiden_size'; did you mean 'hidden_size'?`, one per error."""
    return [f"{'.'.join(str(p) for p in e.get('loc') or ()) or '(spec)'}: {error_message(e, root)}" for e in errors]
