"""Test-wide settings: one intra-op thread per test process keeps runs fast and
repeatable on small CI machines (and avoids oversubscription under pytest-xdist)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)


def cuda_workspace_baseline() -> int:
    """``torch.cuda.memory_allocated()`` once cuBLAS/cuBLASLt have their workspaces: PyTorch
    allocates them through its caching allocator on the first matrix product of a stream and
    keeps them (about 65 MiB on an H200), so "everything freed" means back to this level."""
    import torch

    layer = torch.nn.Linear(8, 8).cuda()
    layer(torch.ones(4, 8, device="cuda")).sum().backward()
    del layer
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated()
