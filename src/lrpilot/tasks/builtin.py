"""Built-in tasks: small, offline, fast on a CPU.

* ``digits-cnn``: scikit-learn ``load_digits`` (8x8 images, 10 classes; 1437 train / 360
  validation, stratified split with a fixed seed), conv(32)+BN, conv(64)+BN, max-pool,
  linear head.
* ``mnist1d-cnn``: MNIST-1D generated locally by ``mnist1d.data.make_dataset`` with its
  default arguments (4000 train / 1000 test, length 40, seed 42), three stride-2 conv1d
  layers of width 32 (kernels 5, 3, 3) and a linear head.
* ``mnist1d-mlp``: the same data, an MLP with two hidden layers of 100 units.

Reference: Greydanus (2020), "Scaling down Deep Learning" (MNIST-1D).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from lrpilot.tasks.base import Task, TaskInfo, accuracy, register_task

if TYPE_CHECKING:  # imported where used: listing the tasks imports neither torch nor numpy
    import numpy as np
    from torch import nn
    from torch.utils.data import TensorDataset

_SGD_DEFAULTS = {
    "epochs": 15,
    "batch_size": 64,
    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
}
_ADAMW_DEFAULTS = {
    "epochs": 15,
    "batch_size": 64,
    "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 1e-2},
}


@cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_tr, x_va, y_tr, y_va


@cache
def _mnist1d_arrays(
    num_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D from ``make_dataset`` with its default arguments (``num_samples`` other than
    its 5 000, split 80/20, for the benchmark's larger held-out tasks), standardised with the
    training set's mean and standard deviation."""
    import numpy as np
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if num_samples is not None:
        args.num_samples = num_samples
    data = make_dataset(args)  # generated locally; never downloaded
    x_tr = np.asarray(data["x"], dtype=np.float32)
    x_va = np.asarray(data["x_test"], dtype=np.float32)
    mean, std = x_tr.mean(), x_tr.std()
    x_tr, x_va = (x_tr - mean) / std, (x_va - mean) / std
    return x_tr, x_va, np.asarray(data["y"], np.int64), np.asarray(data["y_test"], np.int64)


def _datasets(arrays, add_channel: bool) -> tuple[TensorDataset, TensorDataset]:
    import torch
    from torch.utils.data import TensorDataset

    x_tr, x_va, y_tr, y_va = arrays
    tx_tr, tx_va = torch.from_numpy(x_tr), torch.from_numpy(x_va)
    if add_channel:
        tx_tr, tx_va = tx_tr[:, None, :], tx_va[:, None, :]
    return (
        TensorDataset(tx_tr, torch.from_numpy(y_tr)),
        TensorDataset(tx_va, torch.from_numpy(y_va)),
    )


def _digits_model() -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 10),
    )


def _mnist1d_cnn_model() -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv1d(1, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 5, 10),
    )


def _mnist1d_mlp_model() -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Linear(40, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def digits_cnn() -> Task:
    from torch import nn

    train_set, val_set = _datasets(_digits_arrays(), add_channel=False)
    return Task(
        name="digits-cnn",
        build_model=_digits_model,
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults=_SGD_DEFAULTS,
        description="scikit-learn digits (8x8), small CNN with BatchNorm, SGD",
    )


def mnist1d_cnn() -> Task:
    from torch import nn

    train_set, val_set = _datasets(_mnist1d_arrays(), add_channel=True)
    return Task(
        name="mnist1d-cnn",
        build_model=_mnist1d_cnn_model,
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults=_SGD_DEFAULTS,
        description="MNIST-1D (generated locally), 3-layer stride-2 conv1d, SGD",
    )


def mnist1d_mlp() -> Task:
    from torch import nn

    train_set, val_set = _datasets(_mnist1d_arrays(), add_channel=False)
    return Task(
        name="mnist1d-mlp",
        build_model=_mnist1d_mlp_model,
        train_set=train_set,
        val_set=val_set,
        loss_fn=nn.functional.cross_entropy,
        metrics={"accuracy": accuracy},
        defaults=_ADAMW_DEFAULTS,
        description="MNIST-1D (generated locally), MLP 100-100, AdamW",
    )


# What `lrpilot tasks` lists, without generating the data (tests/test_tasks.py checks it
# against the built tasks).
_INFO = {
    "digits-cnn": TaskInfo(
        "digits-cnn", 1437, 360, (1, 8, 8), 29258, "sgd",
        "scikit-learn digits (8x8), small CNN with BatchNorm, SGD",
    ),
    "mnist1d-cnn": TaskInfo(
        "mnist1d-cnn", 4000, 1000, (1, 40), 8010, "sgd",
        "MNIST-1D (generated locally), 3-layer stride-2 conv1d, SGD",
    ),
    "mnist1d-mlp": TaskInfo(
        "mnist1d-mlp", 4000, 1000, (40,), 15210, "adamw",
        "MNIST-1D (generated locally), MLP 100-100, AdamW",
    ),
}  # fmt: skip
register_task("digits-cnn", digits_cnn, info=_INFO["digits-cnn"])
register_task("mnist1d-cnn", mnist1d_cnn, info=_INFO["mnist1d-cnn"])
register_task("mnist1d-mlp", mnist1d_mlp, info=_INFO["mnist1d-mlp"])
