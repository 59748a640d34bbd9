"""Test-wide settings: one intra-op thread per test process keeps runs fast and
repeatable on small CI machines (and avoids oversubscription under pytest-xdist)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
