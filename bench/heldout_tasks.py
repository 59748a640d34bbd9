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

import functools
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lrpilot.tasks.base import Task, accuracy


def _factory(fn: Callable[[], Task]) -> Callable[[], Task]:
    """Build the task once (``functools.cache``) behind a plain function: ``get_task``
    rejects a cache wrapper, which ``inspect`` reports as a method descriptor."""
    memo = cache(fn)

    @functools.wraps(fn)
    def factory() -> Task:
        return memo()

    return factory


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


@_factory
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


@_factory
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


@_factory
def mnist1d_cnn_16k() -> Task:
    return _mnist1d_16k("mnist1d-cnn-16k", "mnist1d-cnn", add_channel=True)


@_factory
def mnist1d_mlp_16k() -> Task:
    return _mnist1d_16k("mnist1d-mlp-16k", "mnist1d-mlp", add_channel=False)


# --------------------------------------------------------------------------------------
# A third held-out set for the autopilot (bench/autopilot_panel.py): kinds of model the
# finder was never calibrated on and that no rule of lrpilot was fitted on. They are kept
# out of every fit: the autopilot's constants were chosen before their grids were run.


@_factory
def digits_cnn_nobn() -> Task:
    """The built-in digits-cnn data and layout without its two BatchNorm layers (a CNN with
    no normalization: SGD is far less forgiving of a high LR there)."""
    from lrpilot.tasks import get_task

    digits = get_task("digits-cnn")

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 10),
        )

    return _classification_task(
        "digits-cnn-nobn",
        build,
        digits.train_set,
        digits.val_set,
        "scikit-learn digits, the digits-cnn layout without BatchNorm (benchmark only)",
    )


class _GRUClassifier(nn.Module):
    """A one-layer GRU over a sequence of scalars; the last hidden state feeds a linear head.

    Input ``(batch, length)``; output ``(batch, classes)``.
    """

    def __init__(self, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(x.unsqueeze(-1))
        return self.head(h[-1])


@_factory
def gru_mnist1d() -> Task:
    """MNIST-1D (the built-in data: 4 000 train / 1 000 test) read as a sequence of 40
    scalars by a GRU with 32 hidden units (a recurrent model; no normalization)."""
    from lrpilot.tasks import get_task

    flat = get_task("mnist1d-mlp")  # (batch, 40) inputs
    return _classification_task(
        "gru-mnist1d",
        _GRUClassifier,
        flat.train_set,
        flat.val_set,
        "MNIST-1D as a sequence of 40 scalars, GRU(32) classifier (benchmark only)",
    )


#: the text of the tiny language model: these modules of the Python standard library, in
#: this order (``os.path.dirname(os.__file__)``; their exact text depends on the Python
#: version, so a run records the size it read)
LM_SOURCES = (
    "argparse.py",
    "dataclasses.py",
    "functools.py",
    "textwrap.py",
    "string.py",
    "fractions.py",
    "statistics.py",
    "heapq.py",
    "bisect.py",
    "shlex.py",
)
LM_CONTEXT = 32
LM_TRAIN_WINDOWS = 2048
LM_VAL_WINDOWS = 256


class _TinyCausalLM(nn.Module):
    """A 2-layer pre-norm causal transformer over bytes (vocabulary 128, width 48, 4 heads,
    context 32, learned positions); output ``(batch, length, 128)`` next-byte logits."""

    def __init__(self, vocab: int = 128, width: int = 48, layers: int = 2, context: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(context, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device)
        h = self.embed(x) + self.pos[:length]
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))


def lm_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy over every position (nats per byte)."""
    return nn.functional.cross_entropy(outputs.flatten(0, 1), targets.flatten())


@cache
def _lm_windows() -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of ``LM_CONTEXT + 1`` ASCII bytes of the stdlib text: the
    first ``LM_TRAIN_WINDOWS`` for training, the next ``LM_VAL_WINDOWS`` for validation."""
    import os

    root = os.path.dirname(os.__file__)
    chunks = []
    for name in LM_SOURCES:
        with open(os.path.join(root, name), "rb") as fh:
            chunks.append(fh.read())
    data = np.frombuffer(b"\n".join(chunks), dtype=np.uint8)
    data = data[data < 128].astype(np.int64)  # ASCII only: vocabulary 128
    span = LM_CONTEXT + 1
    need = (LM_TRAIN_WINDOWS + LM_VAL_WINDOWS) * span
    if len(data) < need:
        raise RuntimeError(f"stdlib text too short for the LM task: {len(data)} < {need} bytes")
    windows = torch.from_numpy(data[:need].copy()).view(-1, span)
    return windows[:LM_TRAIN_WINDOWS], windows[LM_TRAIN_WINDOWS:]


@_factory
def tiny_lm() -> Task:
    """Byte-level causal LM on Python standard-library source (see ``LM_SOURCES``): 2 048
    training windows of 32 bytes (65 536 target bytes), 256 validation windows; metric
    ``val_loss`` (nats per byte, lower is better)."""
    return _lm_task(
        "tiny-lm",
        _TinyCausalLM,
        "byte-level 2-layer causal transformer on stdlib source (benchmark only)",
    )


def _lm_task(name: str, build: Callable[[], nn.Module], description: str) -> Task:
    """A next-byte task on :func:`_lm_windows` (inputs: a window's first 32 bytes,
    targets: its last 32), scored by ``val_loss`` (:func:`lm_loss`)."""
    train, val = _lm_windows()
    return Task(
        name=name,
        build_model=build,
        train_set=TensorDataset(train[:, :-1].contiguous(), train[:, 1:].contiguous()),
        val_set=TensorDataset(val[:, :-1].contiguous(), val[:, 1:].contiguous()),
        loss_fn=lm_loss,
        metrics={},
        description=description,
    )


# --------------------------------------------------------------------------------------
# A regression task for the autopilot's settings benchmark (bench/autopilot_settings.py),
# added after the autopilot's constants were chosen and kept out of every fit.


@_factory
def friedman_mlp() -> Task:
    """Regression: scikit-learn's ``make_friedman1`` (5 000 samples, 10 features of which 5
    matter, noise 0.5, ``random_state=0``), target standardised with the training
    statistics, 4 000 train / 1 000 validation; a tanh MLP 10-64-64-1 without normalisation,
    mean squared error. Scored by validation MSE (lower is better)."""
    from sklearn.datasets import make_friedman1

    x_np, y_np = make_friedman1(n_samples=5000, n_features=10, noise=0.5, random_state=0)
    x = torch.tensor(x_np, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.float32).unsqueeze(1)
    y = (y - y[:4000].mean()) / y[:4000].std()

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(10, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        )

    return _regression_task(
        "friedman-mlp", build, x, y, 4000, nn.functional.mse_loss,
        "Friedman #1 regression, tanh MLP 10-64-64-1, MSE (benchmark only)",
    )  # fmt: skip


def _regression_task(  # type: ignore[no-untyped-def]
    name: str, build, x: torch.Tensor, y: torch.Tensor, n_train: int, loss_fn, description: str
) -> Task:
    """A regression task: the first ``n_train`` rows train, the rest validate; scored by the
    validation loss (no metric)."""
    return Task(
        name=name,
        build_model=build,
        train_set=TensorDataset(x[:n_train], y[:n_train]),
        val_set=TensorDataset(x[n_train:], y[n_train:]),
        loss_fn=loss_fn,
        description=description,
    )


# --------------------------------------------------------------------------------------
# Four more kinds for the settings benchmark, added in the thirteenth session after every
# autopilot constant was chosen (an attention classifier, a recurrent LM, a deep plain MLP,
# a small regression with batch norm and a Huber loss); kept out of every fit.


class _PatchTransformer(nn.Module):
    """A 2-layer post-norm transformer encoder (width 64, 4 heads, feed-forward 128) over the
    40 scalars of an MNIST-1D example read as 10 tokens of 4; learned positions, mean pool,
    a linear head. Input ``(batch, 40)``; output ``(batch, classes)``."""

    def __init__(self, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.pos = nn.Parameter(torch.zeros(1, 10, width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.view(x.shape[0], 10, 4)) + self.pos
        return self.head(self.blocks(h).mean(dim=1))


@_factory
def transformer_mnist1d() -> Task:
    """MNIST-1D (the built-in data) as 10 tokens of 4 scalars, classified by a 2-layer
    transformer encoder (attention, LayerNorm): :class:`_PatchTransformer`."""
    from lrpilot.tasks import get_task

    flat = get_task("mnist1d-mlp")
    return _classification_task(
        "transformer-mnist1d",
        _PatchTransformer,
        flat.train_set,
        flat.val_set,
        "MNIST-1D as 10 tokens, 2-layer transformer encoder classifier (benchmark only)",
    )


class _ByteLSTM(nn.Module):
    """A one-layer LSTM language model over bytes (embedding 48, hidden 96, vocabulary 128);
    output ``(batch, length, 128)`` next-byte logits."""

    def __init__(self, vocab: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 48)
        self.lstm = nn.LSTM(48, 96, batch_first=True)
        self.head = nn.Linear(96, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.head(h)


@_factory
def lstm_lm() -> Task:
    """The tiny LM's text and windows (:func:`_lm_windows`) modelled by an LSTM instead of a
    transformer (a recurrent language model); metric ``val_loss`` in nats per byte."""
    return _lm_task("lstm-lm", _ByteLSTM, "byte-level LSTM LM on stdlib source (benchmark only)")


@_factory
def deep_mlp_digits() -> Task:
    """``load_digits`` (the built-in split) through a 9-layer ReLU MLP of width 64 with
    PyTorch's default initialisation and no normalisation (a deep plain network)."""
    flat = digits_mlp()

    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Linear(64, 64), nn.ReLU()]
        for _ in range(7):
            layers += [nn.Linear(64, 64), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(64, 10))

    return _classification_task(
        "deep-mlp-digits", build, flat.train_set, flat.val_set,
        "digits, 9-layer ReLU MLP without normalisation (benchmark only)",
    )  # fmt: skip


@_factory
def diabetes_bn() -> Task:
    """Regression on scikit-learn's ``load_diabetes`` (442 patients, 10 standardised
    features, the target standardised with the training statistics): the first 350 of a
    seeded permutation train, the other 92 validate; an MLP 10-64-1 with BatchNorm, Huber
    loss. Scored by the validation Huber loss (lower is better)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(0))
    x = torch.tensor(data.data, dtype=torch.float32)[order]
    y = torch.tensor(data.target, dtype=torch.float32)[order].unsqueeze(1)
    mean, std = x[:350].mean(0), x[:350].std(0)
    x = (x - mean) / std
    y = (y - y[:350].mean()) / y[:350].std()

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1))

    return _regression_task(
        "diabetes-bn", build, x, y, 350, nn.functional.huber_loss,
        "diabetes regression, MLP with BatchNorm, Huber loss (benchmark only)",
    )  # fmt: skip
