"""Online Alignahead distillation of graph neural network students (Guo, Chen, Wang, IJCNN 2022)."""

import os

os.environ.setdefault("DGLBACKEND", "pytorch")

from alignahead.checkpoints import load_student, save_student  # noqa: E402
from alignahead.spec import JobSpec  # noqa: E402

__all__ = ["JobSpec", "load_student", "save_student"]
__version__ = "0.1.0"
