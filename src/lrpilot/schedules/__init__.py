"""The schedule library: pure, picklable ``step -> learning rate`` functions.

Families (absolute LR at each 0-based optimizer step): ``constant``, ``step_decay``,
``multistep``, ``exponential``, ``polynomial``, ``linear``, ``piecewise``, ``cosine``,
``cosine_restarts``, ``one_cycle`` (+ ``one_cycle_momentum``), ``cyclic``,
``inverse_sqrt``, ``wsd`` and ``from_function``; combinators ``warmup``, ``join``,
``scale``; the metric-driven ``Plateau``; ``from_config`` for the YAML/dict form; and
``attach`` to drive a PyTorch optimizer.

>>> import torch
>>> from lrpilot import schedules
>>> s = schedules.warmup(schedules.cosine(0.1, steps=90), steps=10)
>>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
>>> sched = schedules.attach(opt, s)
>>> for _ in range(10):
...     opt.step(); sched.step()
>>> opt.param_groups[0]["lr"]
0.1
"""

from lrpilot.schedules.adapter import ScheduleAdapter, attach
from lrpilot.schedules.base import Schedule
from lrpilot.schedules.combinators import Join, Scale, Warmup, join, scale, warmup
from lrpilot.schedules.config import (
    FAMILIES,
    SCHEDULE_NAMES,
    from_config,
    momentum_from_config,
)
from lrpilot.schedules.cyclic import (
    Cyclic,
    OneCycle,
    OneCycleMomentum,
    cyclic,
    one_cycle,
    one_cycle_momentum,
)
from lrpilot.schedules.families import (
    Constant,
    Cosine,
    CosineRestarts,
    Exponential,
    FromFunction,
    InverseSqrt,
    Linear,
    MultiStep,
    Piecewise,
    Polynomial,
    StepDecay,
    Wsd,
    constant,
    cosine,
    cosine_restarts,
    exponential,
    from_function,
    inverse_sqrt,
    linear,
    multistep,
    piecewise,
    polynomial,
    step_decay,
    wsd,
)
from lrpilot.schedules.plateau import Plateau

__all__ = [
    "FAMILIES",
    "SCHEDULE_NAMES",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Cyclic",
    "Exponential",
    "FromFunction",
    "InverseSqrt",
    "Join",
    "Linear",
    "MultiStep",
    "OneCycle",
    "OneCycleMomentum",
    "Piecewise",
    "Plateau",
    "Polynomial",
    "Scale",
    "Schedule",
    "ScheduleAdapter",
    "StepDecay",
    "Warmup",
    "Wsd",
    "attach",
    "constant",
    "cosine",
    "cosine_restarts",
    "cyclic",
    "exponential",
    "from_config",
    "from_function",
    "inverse_sqrt",
    "join",
    "linear",
    "momentum_from_config",
    "multistep",
    "one_cycle",
    "one_cycle_momentum",
    "piecewise",
    "polynomial",
    "scale",
    "step_decay",
    "warmup",
    "wsd",
]
