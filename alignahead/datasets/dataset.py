"""The type every dataset source ends up as, and the error a user can fix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alignahead.graph import Graph

MAX_BYTES = 2 * 1024**3  # cap on an npz's uncompressed size and on dense feature matrices
MASK_KEYS = ("train_mask", "val_mask", "test_mask")

Masks = tuple[np.ndarray, np.ndarray, np.ndarray]
Piece = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # src, dst, features, labels of one graph


class DatasetError(ValueError):
    """A dataset problem the user can fix; the message says what is wrong and how to fix it."""


@dataclass
class GraphDataset:
    name: str
    num_features: int
    num_classes: int  # number of labels when multilabel
    multilabel: bool
    train: list[Graph]
    val: list[Graph]
    test: list[Graph]
    # what loading did to the source, for logs and reports: features, largest_component, nodes kept, ...
    preprocessing: dict[str, object] = field(default_factory=dict)

    @property
    def transductive(self) -> bool:
        return len(self.train) == 1 and len(self.test) == 1 and self.train[0] is self.test[0]
