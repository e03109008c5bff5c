"""Online Alignahead distillation of graph neural network students (Guo, Chen, Wang, IJCNN 2022).

`JobSpec` loads at once; the names that need torch (`load_student`, `save_student`, `load_graph`,
`prepare_graph`, `Graph`) and the service client (`Client`) load on first use, so that
`alignahead jobs` and `import alignahead.client` start in a fraction of a second.
"""

from typing import Any

from alignahead.spec import JobSpec

_LAZY = {
    "load_student": "alignahead.checkpoints",
    "save_student": "alignahead.checkpoints",
    "load_graph": "alignahead.inference",
    "prepare_graph": "alignahead.inference",
    "Graph": "alignahead.graph",
    "Client": "alignahead.client",
}

__all__ = ["Client", "Graph", "JobSpec", "load_graph", "load_student", "prepare_graph", "save_student"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alignahead' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
