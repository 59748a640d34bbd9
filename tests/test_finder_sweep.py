"""The sweep: LR grid, stop rules, per-group multipliers, accumulation, AMP accounting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lrpilot import find_lr
from lrpilot.finder.sweep import DivergenceRule, sweep_lrs


class Quadratic(nn.Module):
    """``loss = 0.5 * a * (w - 1 - xi)^2 + offset`` with ``xi`` the batch's noise (its first
    input): gradient descent on it diverges exactly when ``lr > 2 / a`` (the error is
    multiplied by ``1 - lr * a`` each step). Losses above ``nan_above`` become NaN."""

    def __init__(self, a: float = 4.0, offset: float = 0.0, nan_above: float = math.inf) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([3.0]))
        self.a, self.offset, self.nan_above = a, offset, nan_above

    def forward(self, x):
        err = self.w - 1.0 - x[:, 0]
        loss = 0.5 * self.a * err**2
        loss = torch.where(loss > self.nan_above, torch.full_like(loss, math.nan), loss)
        return loss + self.offset


def _mean_loss(out, _y):
    return out.mean()


def _batches(n=1000, b=4, noise=0.0):
    g = torch.Generator().manual_seed(0)
    return [(noise * torch.randn(b, 1, generator=g), torch.zeros(b)) for _ in range(n)]


class CountingLoader:
    def __init__(self, batch=4, length=7):
        self.batch, self.length, self.yielded = batch, length, 0

    def __iter__(self):
        for _ in range(self.length):
            self.yielded += 1
            yield torch.zeros(self.batch, 1), torch.zeros(self.batch)


def test_sweep_lrs_exp_and_linear_match_closed_form():
    exp = sweep_lrs(1e-4, 1.0, 5, "exp")
    assert exp == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12)
    assert exp[0] == 1e-4 and exp[-1] == 1.0
    assert sweep_lrs(0.1, 0.5, 5, "linear") == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_divergence_rule_ignores_single_spike_and_works_for_negative_losses():
    rule = DivergenceRule(initial_loss=-1.0)
    seq = [-1.2, -1.5, -1.9, 1e6, -2.1, -2.2, -2.15, -2.2]
    assert not any(rule.update(v) for v in seq)
    # Stop level: L0 + 2 * max(L0 - best, 10 * noise) = -1 + 2 * max(1.2, 10 * 0.3) = 5
    # (noise: median |difference| of consecutive losses up to the best); the median of the
    # last 3 must pass it.
    assert [rule.update(v) for v in (8.0, 9.0)] == [False, True]
    assert rule.reason == "diverged"


def test_divergence_rule_stops_at_once_on_nan_and_inf():
    for bad in (math.nan, math.inf, -math.inf):
        rule = DivergenceRule(initial_loss=1.0)
        assert rule.update(bad)
        assert rule.reason == "non-finite loss"


def test_quadratic_instability_matches_closed_form_with_negative_losses():
    # Every loss is negative; plain GD diverges for lr > 2 / a = 0.5. Noisy targets keep the
    # error (~0.1) from vanishing; from there the loss needs ~4 sweep steps (LR x1.21 each,
    # error x|1 - 4 lr|) to climb halfway back to its start, i.e. it shows by lr ~ 1.1.
    model = Quadratic(a=4.0, offset=-50.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, _mean_loss, _batches(noise=0.1), start_lr=1e-3, end_lr=100, steps=60)
    assert res.verdict == "ok"
    assert res.initial_loss < 0 and min(res.losses) < -49
    assert 0.5 <= res.lr_unstable <= 0.5 * 2.5
    assert res.unstable_interval[0] <= res.lr_unstable <= res.unstable_interval[1]
    assert res.stop_reasons[0] in ("diverged", "non-finite loss")
    assert len(res.lrs) < 50  # stopped early instead of sweeping on to 100
    assert model.w.item() == 3.0  # restored


def test_nan_stops_the_sweep_and_brackets_the_instability():
    model = Quadratic(a=1.0, nan_above=1e3)  # GD diverges above lr = 2
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, _mean_loss, _batches(), start_lr=1e-3, end_lr=1e4, steps=60)
    assert res.stop_reasons == ["non-finite loss"]
    assert math.isnan(res.losses[-1])
    assert all(math.isfinite(v) for v in res.losses[:-1])
    assert len(res.lrs) < 60
    assert res.optimizer_steps == len(res.lrs)
    assert res.verdict == "ok" and res.lr_unstable >= 2.0
    assert res.lr_unstable <= res.lrs[-1]  # not past the first NaN


def test_per_group_multipliers_are_preserved_and_restored():
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    opt = torch.optim.SGD(
        [{"params": a.parameters(), "lr": 0.1}, {"params": b.parameters(), "lr": 0.025}],
        momentum=0.9,
    )
    model = nn.ModuleList([a, b])
    seen = []
    handle = opt.register_step_pre_hook(
        lambda o, args, kwargs: seen.append([g["lr"] for g in o.param_groups])
    )

    def loss_fn(out, y):
        return out.pow(2).mean()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m[0](x) + self.m[1](x)

    x = torch.randn(64, 2)
    batches = [(x[i : i + 8], None) for i in range(0, 64, 8)]
    res = find_lr(Wrap(), opt, loss_fn, batches, start_lr=1e-4, end_lr=1e-2, steps=10)
    handle.remove()
    assert res.optimizer_steps == 10 == len(seen)
    assert [s[0] for s in seen] == pytest.approx(sweep_lrs(1e-4, 1e-2, 10, "exp"))
    assert all(s[1] == pytest.approx(0.25 * s[0]) for s in seen)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.025]


def test_accumulation_counts_micro_batches_and_matches_a_big_batch():
    loader = CountingLoader(batch=4, length=1000)
    model = Quadratic(a=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(
        model, opt, _mean_loss, loader, start_lr=1e-4, end_lr=1e-2, steps=10, accumulate=3
    )
    assert res.stop_reasons == ["completed"]
    assert res.optimizer_steps == 10
    assert loader.yielded == 3 * (10 + 1)  # one extra forward pass measures the last step
    assert res.samples == 4 * 3 * 11

    # Accumulating 2 micro-batches of 4 equals one batch of 8 of the same samples.
    torch.manual_seed(0)
    data = torch.randn(800, 3)
    target = data @ torch.tensor([1.0, -1.0, 2.0])
    lin = nn.Linear(3, 1)
    opt2 = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.5)

    def mse(out, y):
        return ((out.squeeze(1) - y) ** 2).mean()

    small = [(data[i : i + 4], target[i : i + 4]) for i in range(0, 800, 4)]
    big = [(data[i : i + 8], target[i : i + 8]) for i in range(0, 800, 8)]
    kw = {"start_lr": 1e-4, "end_lr": 0.05, "steps": 20}
    r_acc = find_lr(lin, opt2, mse, small, accumulate=2, **kw)
    r_big = find_lr(lin, opt2, mse, big, **kw)
    assert r_acc.lrs == r_big.lrs
    assert r_acc.losses == pytest.approx(r_big.losses, rel=1e-5)


def test_amp_on_cpu_runs_in_bfloat16_and_restores():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dtypes = []
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x = torch.randn(256, 4)
    y = (x[:, 0] > 0).long()
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 256, 16)]
    w = model[0].weight.detach().clone()
    res = find_lr(model, opt, nn.functional.cross_entropy, batches, steps=10, amp=True)
    assert set(dtypes) == {torch.bfloat16}
    assert res.optimizer_steps >= 1
    assert torch.equal(model[0].weight, w)


def test_gradscaler_skipped_steps_are_counted_not_tested():
    # An absurd initial scale overflows the first backward passes: the scaler skips those
    # steps and halves its scale until the gradients are finite again.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
    model = Quadratic(a=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    opt.register_step_post_hook(lambda o, a, k: steps.append(o.param_groups[0]["lr"]))
    res = find_lr(
        model, opt, _mean_loss, _batches(), start_lr=1e-4, end_lr=1e-2, steps=8, scaler=scaler
    )
    assert res.skipped_steps > 0
    assert res.optimizer_steps == 8 == len(steps)  # every LR was really applied once
    assert res.lrs == pytest.approx(sweep_lrs(1e-4, 1e-2, 8, "exp"))
    assert steps == pytest.approx(res.lrs)
    assert scaler.get_scale() == 2.0**127  # restored


@pytest.mark.parametrize("use_val", [False, True])
def test_recorded_loss_is_the_loss_after_each_step_closed_form(use_val):
    # Noise-free quadratic: w_{k+1} = w_k - lr_k * a * (w_k - 1), so the loss after the
    # step at lr_k is 0.5 * a * (w_{k+1} - 1)^2, on the next training batch or on val_batch.
    a = 2.0
    model = Quadratic(a=a)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    val = (torch.zeros(5, 1), torch.zeros(5)) if use_val else None
    lrs = sweep_lrs(1e-3, 0.5, 12, "exp")
    res = find_lr(
        model, opt, _mean_loss, _batches(), start_lr=1e-3, end_lr=0.5, steps=12, val_batch=val
    )
    w, expected = 3.0, []
    for lr in lrs:
        w = w - lr * a * (w - 1.0)
        expected.append(0.5 * a * (w - 1.0) ** 2)
    assert res.lrs == pytest.approx(lrs)
    assert res.losses == pytest.approx(expected, rel=1e-5)
    assert res.initial_loss == pytest.approx(0.5 * a * 4.0)
    if use_val:
        assert res.samples == 12 * 4 + 13 * 5  # 12 training batches, 13 evaluations
        assert modes.count(False) == 13  # evaluations run in eval mode
    else:
        assert res.samples == 13 * 4
        assert all(modes)


def test_repeats_start_from_the_same_state_on_new_batches():
    # Noise-free: both repeats restart from w = 3 and record identical curves.
    model = Quadratic(a=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    res = find_lr(model, opt, _mean_loss, _batches(), start_lr=1e-3, end_lr=0.5, steps=8, repeats=2)
    assert res.optimizer_steps == 16 and len(res.repeat_lr_unstable) == 2
    assert res.lrs[0::2] == res.lrs[1::2]  # pooled and sorted by LR
    assert res.losses[0::2] == res.losses[1::2]
    # A shuffling loader with exactly one pass per repeat: the second pass must be shuffled
    # anew (the RNG is not rewound between repeats, only at the very end).
    seen = []
    data = torch.utils.data.TensorDataset(torch.arange(24.0)[:, None], torch.zeros(24))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)

    def loss_fn(out, y):
        return out.mean()

    class Record(Quadratic):
        def forward(self, x):
            seen.append(x[:, 0].tolist())
            return super().forward(0 * x)

    find_lr(Record(a=2.0), opt, loss_fn, loader, start_lr=1e-3, end_lr=0.5, steps=5, repeats=2)
    assert len(seen) == 12 and seen[:6] != seen[6:]
    first = sorted(v for batch in seen[:6] for v in batch)
    second = sorted(v for batch in seen[6:] for v in batch)
    assert first == second == list(range(24))  # each repeat is one full pass


def test_optimizer_family_is_detected_and_unknown_optimizers_must_name_one():
    from lrpilot.errors import ConfigError
    from lrpilot.finder.core import optimizer_family_of
    from lrpilot.finder.policy import SCHEDULE_FRACTIONS

    class MyAdamW(torch.optim.AdamW):
        pass

    p = [nn.Parameter(torch.zeros(1))]
    assert optimizer_family_of(torch.optim.SGD(p, lr=0.1, momentum=0.9)) == "sgd"
    for cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, MyAdamW):
        assert optimizer_family_of(cls(p)) == "adam"
    kw = {"start_lr": 1e-3, "end_lr": 100, "steps": 40}
    model = Quadratic(a=4.0)
    rms = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with pytest.raises(ConfigError, match=r"RMSprop.*optimizer_family"):
        find_lr(model, rms, _mean_loss, _batches(), **kw)
    assert model.w.item() == 3.0 and not rms.state  # refused before any work
    res = find_lr(model, rms, _mean_loss, _batches(), optimizer_family="adam", batch_ratio=4, **kw)
    assert res.optimizer_family == "adam" and res.batch_ratio == 4.0
    assert res.verdict == "ok"
    assert res.suggestion == pytest.approx(SCHEDULE_FRACTIONS["one_cycle"] * 2 * res.lr_unstable)
    adam = find_lr(model, torch.optim.Adam(model.parameters()), _mean_loss, _batches(), **kw)
    assert adam.optimizer_family == "adam" and adam.batch_ratio == 8.0
