"""Tasks that only the finder benchmark uses, to test that the suggestion rule generalises.

They were added after the rule's constants were fitted and were not looked at while fitting
them (``bench/results/finder_rule_research.md``, "second held-out set"). Both are offline
and fast on a CPU, and differ from the built-in tasks in architecture, data and size:

* ``digits_mlp``: scikit-learn ``load_digits`` flattened to 64 features (scaled to [0, 1],
  the built-in stratified split), an MLP 64-128-128-10 without normalisation layers.
* ``synth_mlp_ln``: scikit-learn ``make_classification`` (12 000 samples, 32 features of
  which 16 informative and 8 redundant, 8 classes, 2 clusters per class, class_sep 1.0,
  2% flipped labels, ``random_state=0``), standardised with the training statistics,
  10 000 train / 2 000 validation, an MLP 32-256-256-8 with LayerNorm. Its training set is
  2.5 times MNIST-1D's, so the finder's half-epoch budget gives a sweep of 624 steps
  instead of 88-249.

Use them by name in ``lrpilot`` calls: ``get_task("heldout_tasks:digits_mlp")`` with
``bench/`` on ``sys.path``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.tasks.base import Task, accuracy


def _classification_task(name: str, build, train_set, val_set, description: str) -> Task:  # type: ignore[no-untyped-def]
    """A classification task: cross-entropy loss, accuracy metric, no run defaults."""
    return Task(
        name=name,
        build_model=build,
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        description=description,
    )


@cache
def digits_mlp() -> Task:
    from lrpilot.tasks import get_task

    # the built-in digits-cnn data (same split and scaling), flattened to 64 features
    digits = get_task("digits-cnn")
    train_set, val_set = (
        TensorDataset(x.flatten(1), y)
        for x, y in (digits.train_set.tensors, digits.val_set.tensors)
    )

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    return _classification_task(
        "digits-mlp",
        build,
        train_set,
        val_set,
        "scikit-learn digits flattened, MLP 64-128-128-10 (benchmark only)",
    )


@cache
def synth_mlp_ln() -> Task:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=12_000,
        n_features=32,
        n_informative=16,
        n_redundant=8,
        n_classes=8,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.02,
        random_state=0,
    )
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    x_tr, x_va, y_tr, y_va = x[:10_000], x[10_000:], y[:10_000], y[10_000:]
    mean, std = x_tr.mean(0), x_tr.std(0)
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    train_set = TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr))
    val_set = TensorDataset(torch.from_numpy(x_va), torch.from_numpy(y_va))

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(32, 256),
            nn.LayerNorm(256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.LayerNorm(256),
            nn.ReLU(),
            nn.Linear(256, 8),
        )

    return _classification_task(
        "synth-mlp-ln",
        build,
        train_set,
        val_set,
        "make_classification, 8 classes, MLP with LayerNorm (benchmark only)",
    )


def _mnist1d_16k(name: str, model_of: str, add_channel: bool) -> Task:
    """The built-in ``model_of`` task's model on MNIST-1D made with 20 000 samples instead of
    5 000 (16 000 train / 4 000 test; the other arguments, seed and scaling as built in), so
    the finder's half-epoch sweep has 999 steps instead of 249."""
    from lrpilot.tasks import get_task
    from lrpilot.tasks.builtin import _datasets, _mnist1d_arrays

    train_set, val_set = _datasets(_mnist1d_arrays(num_samples=20_000), add_channel)
    return _classification_task(
        name,
        get_task(model_of).build_model,
        train_set,
        val_set,
        f"MNIST-1D with 16 000 training samples, the {model_of} model (benchmark only)",
    )


@cache
def mnist1d_cnn_16k() -> Task:
    return _mnist1d_16k("mnist1d-cnn-16k", "mnist1d-cnn", add_channel=True)


@cache
def mnist1d_mlp_16k() -> Task:
    return _mnist1d_16k("mnist1d-mlp-16k", "mnist1d-mlp", add_channel=False)
