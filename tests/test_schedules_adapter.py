"""attach(): LRs written to the optimizer, multipliers, momentum, lr_scale, plateau,
exact resume through a weights_only checkpoint, and the LRScheduler contract."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrpilot import ConfigError
from lrpilot import schedules as S


def make_opt(kind="sgd", groups=1, lr=1.0):
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    pg = [{"params": [p]} for p in params]
    if kind == "sgd":
        return torch.optim.SGD(pg, lr=lr, momentum=0.9), params
    return torch.optim.AdamW(pg, lr=lr, betas=(0.9, 0.999)), params


def train(opt, params, sched, n, record):
    for _ in range(n):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
        record.append([g["lr"] for g in opt.param_groups])


SCHEDULE = S.warmup(S.cosine(0.1, steps=30, final_lr=0.001), steps=10, start_lr=0.01)


def test_initial_lr_is_schedule_zero_and_step_counts():
    opt, params = make_opt(groups=2)
    sched = S.attach(opt, SCHEDULE, multipliers=[1.0, 0.5])
    assert isinstance(sched, LRScheduler)
    assert sched.last_epoch == 0
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.005]
    assert sched.get_last_lr() == [0.01, 0.005]
    rec = []
    train(opt, params, sched, 45, rec)
    assert sched.last_epoch == 45
    for k, lrs in enumerate(rec, start=1):
        assert lrs == [SCHEDULE(k), SCHEDULE(k) * 0.5]


def test_no_scheduler_order_warning_and_no_optimizer_patching():
    opt, params = make_opt()
    step_fn = opt.step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = S.attach(opt, SCHEDULE)
        train(opt, params, sched, 3, [])
    assert opt.step == step_fn
    assert not hasattr(opt.step, "_wrapped_by_lr_sched")


def test_lr_scale_applies_immediately_and_to_later_steps():
    opt, params = make_opt()
    sched = S.attach(opt, SCHEDULE)
    train(opt, params, sched, 12, [])
    sched.set_lr_scale(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(SCHEDULE(12) * 0.5, rel=1e-15)
    rec = []
    train(opt, params, sched, 3, rec)
    assert rec[-1][0] == pytest.approx(SCHEDULE(15) * 0.5, rel=1e-15)
    sched.lr_scale *= 0.5  # the guard may also multiply the attribute, then refresh
    sched.refresh()
    assert opt.param_groups[0]["lr"] == pytest.approx(SCHEDULE(15) * 0.25, rel=1e-15)
    with pytest.raises(ConfigError, match="lr_scale"):
        sched.set_lr_scale(-1.0)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_momentum_schedule_written(kind):
    opt, params = make_opt(kind)
    mom = S.one_cycle_momentum(20)
    sched = S.attach(opt, S.one_cycle(0.1, 20), momentum=mom)
    for k in range(20):
        g = opt.param_groups[0]
        got = g["betas"][0] if kind == "adamw" else g["momentum"]
        assert got == mom(k)
        if kind == "adamw":
            assert g["betas"][1] == 0.999
        train(opt, params, sched, 1, [])


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_set_momentum_swaps_the_momentum_schedule_at_the_current_step(kind):
    opt, params = make_opt(kind)
    sched = S.attach(opt, S.one_cycle(0.1, 20))

    def beta1() -> float:
        g = opt.param_groups[0]
        return g["betas"][0] if kind == "adamw" else g["momentum"]

    before = beta1()
    train(opt, params, sched, 3, [])
    assert beta1() == before  # no momentum schedule: the optimizer's own value stays
    mom = S.linear(0.95, 0.85, 20)
    sched.set_momentum(mom)
    assert beta1() == mom(3)  # written at once, for the current step
    train(opt, params, sched, 2, [])
    assert beta1() == mom(5)
    sched.set_momentum(None)
    train(opt, params, sched, 1, [])
    assert beta1() == mom(5)
    plain = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match="neither 'momentum' nor 'betas'"):
        S.attach(plain, SCHEDULE).set_momentum(mom)


def test_bad_arguments():
    opt, _ = make_opt(groups=2)
    with pytest.raises(ConfigError, match=r"multipliers has 1 entries.*\(2\)"):
        S.attach(opt, SCHEDULE, multipliers=[1.0])
    with pytest.raises(ConfigError, match=r"multipliers\[1\]=-1"):
        S.attach(opt, SCHEDULE, multipliers=[1.0, -1])
    plain = torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match="neither 'momentum' nor 'betas'"):
        S.attach(plain, SCHEDULE, momentum=S.constant(0.9))
    with pytest.raises(TypeError):
        S.attach(object(), SCHEDULE)  # type: ignore[arg-type]


def checkpoint(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def build(schedule, plateau_kw=None, with_momentum=False):
    torch.manual_seed(0)
    opt, params = make_opt(groups=2, lr=3.0)
    plateau = None if plateau_kw is None else S.Plateau(**plateau_kw)
    mom = S.one_cycle_momentum(60) if with_momentum else None
    sched = S.attach(opt, schedule, multipliers=[1.0, 0.1], plateau=plateau, momentum=mom)
    return opt, params, sched, plateau


def run_with_reports(opt, params, sched, plateau, start, stop, rec):
    for k in range(start, stop):
        train(opt, params, sched, 1, rec)
        rec[-1].append(opt.param_groups[0].get("momentum"))
        if plateau is not None and (k + 1) % 5 == 0:
            plateau.report(1.0 if k < 40 else 0.5)  # a plateau, then an improvement
        if k == 25:
            sched.set_lr_scale(0.5)  # a divergence-guard rescue mid-run


RESUME_SCHEDULES = {
    "warmup_cosine": (SCHEDULE, None),
    "one_cycle": (S.one_cycle(0.1, 60), None),
    "multistep": (S.multistep(0.1, [10, 20, 30], 0.5), None),
    "plateau_on_warmup": (SCHEDULE, {"patience": 1, "factor": 0.5, "cooldown": 1}),
}


@pytest.mark.parametrize("name", sorted(RESUME_SCHEDULES))
@pytest.mark.parametrize("k", [0, 1, 10, 11, 17, 20, 26, 40, 59])
def test_resume_is_exact(name, k):
    schedule, plateau_kw = RESUME_SCHEDULES[name]
    mom = name == "one_cycle"
    n = 60
    opt, params, sched, plateau = build(schedule, plateau_kw, mom)
    straight: list = []
    run_with_reports(opt, params, sched, plateau, 0, n, straight)

    opt, params, sched, plateau = build(schedule, plateau_kw, mom)
    resumed: list = []
    run_with_reports(opt, params, sched, plateau, 0, k, resumed)
    lrs_at_save = [g["lr"] for g in opt.param_groups]
    saved = checkpoint({"opt": opt.state_dict(), "sched": sched.state_dict()})
    # Rebuild from scratch (fresh optimizer with a different LR), load, continue.
    opt, params, sched, plateau = build(schedule, plateau_kw, mom)
    train(opt, params, sched, 3, [])  # the new objects are in some other state
    if plateau is not None:
        plateau.report(123.0)
    if k % 2:  # either loading order works
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
    else:
        sched.load_state_dict(saved["sched"])
        opt.load_state_dict(saved["opt"])
    assert [g["lr"] for g in opt.param_groups] == lrs_at_save
    run_with_reports(opt, params, sched, plateau, k, n, resumed)
    assert resumed == straight
    if plateau_kw is not None:
        assert plateau.num_reductions >= 1


def test_load_state_dict_rewrites_optimizer_lr():
    opt, params, sched, _ = build(SCHEDULE)
    train(opt, params, sched, 17, [])
    state = checkpoint(sched.state_dict())
    assert state["version"] == 1 and state["step"] == 17
    opt2, _, sched2, _ = build(SCHEDULE)  # its optimizer holds schedule(0)
    sched2.load_state_dict(state)
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    assert sched2.last_epoch == 17


def test_state_dict_is_primitive_and_validated():
    _opt, _, sched, _ = build(SCHEDULE, {"patience": 2})
    state = sched.state_dict()

    def primitive(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and primitive(v) for k, v in x.items())
        if isinstance(x, list):
            return all(primitive(v) for v in x)
        return x is None or isinstance(x, (int, float, str, bool))

    assert primitive(state)
    with pytest.raises(ConfigError, match="version"):
        sched.load_state_dict({**state, "version": 99})
    with pytest.raises(ConfigError, match="missing key"):
        sched.load_state_dict({"version": 1})
    with pytest.raises(ConfigError, match="no plateau state"):
        sched.load_state_dict({**state, "plateau": None})
    with pytest.warns(UserWarning, match="different schedule"):
        sched.load_state_dict({**state, "schedule": "Cosine(lr=1.0)"})


def test_plateau_never_reduces_during_warmup_and_applies_immediately():
    opt, params = make_opt()
    plateau = S.Plateau(patience=0, factor=0.5)
    sched = S.attach(opt, S.warmup(S.constant(0.1), steps=20), plateau=plateau)
    for k in range(20):
        train(opt, params, sched, 1, [])
        if k < 18:
            assert plateau.report(10.0 + k) is False  # worse every time, but in warmup
    assert plateau.factor == 1.0 and plateau.best == 10.0
    train(opt, params, sched, 1, [])  # step 21: warmup over
    assert plateau.report(10.5) is True
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05, rel=1e-15)  # at once


def test_plateau_min_lr_floor_never_raises_schedule():
    opt, params = make_opt()
    plateau = S.Plateau(patience=0, factor=0.1, min_lr=0.05)
    sched = S.attach(opt, S.linear(0.1, 0.01, 10), plateau=plateau)
    plateau.report(1.0)
    plateau.report(2.0)
    assert opt.param_groups[0]["lr"] == 0.05  # floored at min_lr
    train(opt, params, sched, 10, [])
    assert opt.param_groups[0]["lr"] == 0.01  # the schedule itself is below min_lr


def test_report_without_plateau_errors():
    opt, _ = make_opt()
    with pytest.raises(ConfigError, match="plateau"):
        S.attach(opt, SCHEDULE).report(1.0)


def test_lightning_style_usage():
    """What Lightning does with a ``configure_optimizers`` scheduler (interval "step"):
    isinstance check against LRScheduler, state_dict/load_state_dict present, step()
    after every optimizer step, state round-tripped through its checkpoint."""
    opt, params = make_opt()
    sched = S.attach(opt, SCHEDULE)
    config = {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    s = config["lr_scheduler"]["scheduler"]
    assert isinstance(s, LRScheduler)
    assert callable(s.state_dict) and callable(s.load_state_dict)
    assert not isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau)
    train(opt, params, s, 5, [])
    ckpt = checkpoint({"lr_schedulers": [s.state_dict()]})
    opt2, _ = make_opt()
    s2 = S.attach(opt2, SCHEDULE)
    s2.load_state_dict(ckpt["lr_schedulers"][0])
    assert s2.get_last_lr() == s.get_last_lr() == [SCHEDULE(5)]
    assert not math.isnan(s2.get_last_lr()[0])


def test_tensor_lr_groups_are_filled_in_place():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=torch.tensor(0.5))
    sched = S.attach(opt, S.cosine(0.1, 10))
    lr_tensor = opt.param_groups[0]["lr"]
    p.grad = torch.ones_like(p)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] is lr_tensor
    assert float(lr_tensor) == pytest.approx(S.cosine(0.1, 10)(1), rel=1e-6)


def test_plateau_state_round_trip_and_pickle():
    import pickle

    p = S.Plateau(patience=1, factor=0.5, cooldown=2)
    for m in (3.0, 3.0, 3.0, 2.0, 2.5):
        p.report(m)
    state = checkpoint(p.state_dict())
    q = S.Plateau(patience=1, factor=0.5, cooldown=2)
    q.load_state_dict(state)
    r = pickle.loads(pickle.dumps(p))
    assert q.state_dict() == p.state_dict() == r.state_dict()
    for m in (2.5, 2.5, 2.5, 2.5, 1.0):
        assert q.report(m) == p.report(m) == r.report(m)
    assert q.factor == p.factor == 0.25
    with pytest.raises(ConfigError, match="missing key"):
        q.load_state_dict({"version": 1})


def test_step_with_explicit_step_jumps():
    opt, _ = make_opt()
    sched = S.attach(opt, SCHEDULE)
    sched.step(25)
    assert sched.last_epoch == 25 and opt.param_groups[0]["lr"] == SCHEDULE(25)
    with pytest.raises(ConfigError, match="epoch=-1"):
        sched.step(-1)


def test_resume_with_a_different_schedule_warns_but_not_for_the_same_one():
    opt, _ = make_opt()
    state = checkpoint(S.attach(opt, S.from_function(_module_level_fn)).state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.attach(opt, S.from_function(_module_level_fn)).load_state_dict(state)
        S.attach(opt, lambda t: 0.1).load_state_dict(state)  # plain callables: no fingerprint
    with pytest.warns(UserWarning, match="different schedule"):
        S.attach(opt, S.constant(0.1)).load_state_dict(state)


def _module_level_fn(t):
    return 0.1 / (1 + t)
