"""lrpilot.recommend: the rules table, the pure recommender and the sweep comparison."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lrpilot.errors import ConfigError
from lrpilot.recommend import (
    RULES,
    SCENARIOS,
    FinderMeasurement,
    Measurements,
    Request,
    recommend,
    render_markdown,
    rule,
)
from lrpilot.recommend._choice import better_sweep
from lrpilot.recommend._rules import BASES, readme_section

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ table
def test_every_rule_is_complete_and_replacements_are_measurements():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    for r in RULES:
        assert r.id and r.condition and r.text and r.source, r
        assert r.basis in BASES
        if r.replaced_by:
            assert rule(r.replaced_by).basis == "measured"
    with pytest.raises(ConfigError, match="unknown rule id 'x'"):
        rule("x")


def test_readme_renders_the_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme_section(readme)
    assert section is not None, "README lost its rules-table markers"
    assert section == render_markdown(), "README is stale: run tools/readme_rules.py"
    for r in RULES:  # and the rendering itself carries each row
        assert f"`{r.id}`" in section and r.source in section


def test_choices_cite_existing_rules_for_every_scenario():
    for scenario in SCENARIOS:
        rec = recommend(Request(scenario, dataset_size=50_000, head="fc"))
        for c in rec.choices:
            if c.rule:
                rule(c.rule)
        assert {c.key for c in rec.choices} >= {"optimizer.name", "optimizer.lr", "epochs"}


# ------------------------------------------------------------------------ recommender
def test_detection_multistep_at_two_thirds_and_eight_ninths():
    rec = recommend(Request("detection", dataset_size=100_000, epochs=12))
    s = rec.config["schedule"]
    assert s["name"] == "multistep" and s["gamma"] == 0.1 and s["unit"] == "epochs"
    assert s["milestones"] == [round(12 * 2 / 3, 3), round(12 * 8 / 9, 3)]
    assert rec.config["optimizer"] == {
        "name": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
    }


def test_small_dataset_gets_one_cycle_and_early_stopping_large_gets_cosine_warmup():
    small = recommend(Request("classification", dataset_size=5_000, epochs=20)).config
    assert small["schedule"] == {"name": "one_cycle", "max_lr": 0.01}
    assert small["early_stopping"] == {"patience": 10, "restore_best": True}
    big = recommend(Request("classification", dataset_size=1_000_000, epochs=20)).config
    assert big["schedule"] == {"name": "cosine", "lr": 0.01, "warmup": {"epochs": 2.0}}
    assert "early_stopping" not in big
    long = recommend(Request("classification", dataset_size=1_000_000, epochs=90)).config
    assert long["schedule"]["warmup"] == {"epochs": 5}  # min(5, 0.1 * 90)


def test_large_batch_scales_lr_with_trim_and_warms_up_three_epochs():
    sgd = recommend(Request("classification", dataset_size=10**6, batch=512, epochs=20)).config
    # linear from the top of the 32-128 range: 0.01 * 512 / 128 * (1 - 0.1)
    assert sgd["optimizer"]["lr"] == pytest.approx(0.036)
    assert sgd["schedule"]["warmup"] == {"epochs": 3}
    assert sgd["lr_scaling"] == {"rule": "linear", "base_batch": 512, "conservative": 0.1}
    text = recommend(Request("text", dataset_size=10**6, batch=512, epochs=20)).config
    # square root for AdamW, from 3e-4 (the text rule): 3e-4 * sqrt(4) * 0.9
    assert text["optimizer"]["lr"] == pytest.approx(3e-4 * 2 * 0.9)
    assert text["optimizer"]["name"] == "adamw"
    # a small batch scales down without trimming: 0.01 * 16 / 32
    low = recommend(Request("detection", dataset_size=10**6, batch=16, epochs=12)).config
    assert low["optimizer"]["lr"] == pytest.approx(0.005)
    # a short run caps the large-batch warmup at half the run
    short = recommend(Request("classification", dataset_size=10**6, batch=512, epochs=4)).config
    assert short["schedule"]["warmup"] == {"epochs": 2.0}


def test_gpus_and_memory_limit_split_the_batch():
    rec = recommend(Request("classification", dataset_size=10**6, batch=64, gpus=4))
    assert (rec.config["batch_size"], rec.config["accumulate"]) == (16, 1)
    m = Measurements(dataset_size=10**6, max_device_batch=10)
    rec = recommend(Request("classification", batch=64), m)
    assert (rec.config["batch_size"], rec.config["accumulate"]) == (8, 8)
    assert any(c.key == "accumulate" and c.basis == "measured" for c in rec.choices)


@pytest.mark.parametrize(
    ("b_simple", "total", "replaced"), [(43.0, 32, True), (269.0, 64, False), (3.0, 8, True)]
)
def test_noise_scale_caps_the_batch(b_simple, total, replaced):
    rec = recommend(Request("classification"), Measurements(dataset_size=4000, b_simple=b_simple))
    assert rec.config["batch_size"] == total
    assert (("batch.total", "measure.noise_scale") in rec.replaced) is replaced


def test_batch_bounded_by_dataset_and_batchnorm_note():
    rec = recommend(Request("classification", dataset_size=20, gpus=8))
    assert rec.config["batch_size"] * 8 >= 20 and rec.config["batch_size"] == 3
    m = Measurements(dataset_size=20, has_batchnorm=True)
    rec = recommend(Request("classification", gpus=8), m)
    assert any("batch.bn_min" in n for n in rec.notes)


def test_finder_replaces_the_lr_rule_and_a_failed_sweep_does_not():
    from lrpilot.finder.policy import CALIBRATION_RATIOS, SCHEDULE_FRACTIONS

    fm = FinderMeasurement("sgd", "ok", 0.1, (0.08, 0.12), probe_batch=8, samples=100)
    m = Measurements(dataset_size=4000, finder={"sgd": fm})
    rec = recommend(Request("classification", optimizer="sgd"), m)
    expected = SCHEDULE_FRACTIONS["one_cycle"] * (64 / 8) * 0.1  # f * r^kappa * lr_unstable
    assert rec.config["optimizer"]["lr"] == pytest.approx(expected, rel=5e-3)
    assert rec.config["schedule"]["max_lr"] == rec.config["optimizer"]["lr"]
    assert ("lr.sgd", "measure.finder") in rec.replaced
    lo, hi = (q * 8 * x for q, x in zip(CALIBRATION_RATIOS["one_cycle"], (0.08, 0.12), strict=True))
    reason = next(c.reason for c in rec.choices if c.key == "optimizer.lr")
    assert f"interval {lo:.3g}..{hi:.3g}" in reason
    noisy = dict(m.finder, sgd=FinderMeasurement("sgd", "noisy", None, None, 8, 100))
    rec = recommend(Request("classification", optimizer="sgd"), Measurements(4000, finder=noisy))
    assert rec.config["optimizer"]["lr"] == 0.01 and not rec.replaced
    assert "noisy" in next(c.reason for c in rec.choices if c.key == "optimizer.lr")
    # AdamW carries by the square root: f * sqrt(8) * lr_unstable
    fa = FinderMeasurement("adamw", "ok", 0.01, (0.008, 0.012), 8, 100)
    rec = recommend(Request("text", optimizer="adamw"), Measurements(4000, finder={"adamw": fa}))
    assert rec.config["optimizer"]["lr"] == pytest.approx(
        SCHEDULE_FRACTIONS["one_cycle"] * math.sqrt(8) * 0.01, rel=5e-3
    )


def test_optimizer_auto_needs_a_measurement_and_a_tie_keeps_the_scenario():
    with pytest.raises(ConfigError, match="auto needs --task"):
        recommend(Request("classification", optimizer="auto"))
    tie = Measurements(4000, optimizer_pick="adamw", optimizer_reason="tie", optimizer_tie=True)
    rec = recommend(Request("classification", optimizer="auto"), tie)
    assert rec.config["optimizer"]["name"] == "sgd" and not rec.replaced
    won = Measurements(4000, optimizer_pick="adamw", optimizer_reason="lower")
    rec = recommend(Request("classification", optimizer="auto"), won)
    assert rec.config["optimizer"]["name"] == "adamw"
    assert ("optimizer.default", "measure.optimizer") in rec.replaced


def test_finetune_layer_lr_and_head_required():
    rec = recommend(Request("finetune", dataset_size=50_000, head="fc"))
    assert rec.config["layer_lr"] == {"fc.*": 1.0, "*": 0.1}
    with pytest.raises(ConfigError, match="--head"):
        recommend(Request("finetune"))
    with pytest.raises(ConfigError, match="give --head"):  # measured, but no head found
        recommend(Request("finetune", task="t"), Measurements(100, head=None))


def test_finetune_layer_lr_groups_the_head_apart_in_fit():
    import torch

    from lrpilot.recommend._measure import head_name
    from lrpilot.tasks import get_task
    from lrpilot.train._builders import build_param_groups

    model = get_task("digits-cnn").build_model()
    head = head_name(model)
    assert head == "8"  # the final nn.Linear of the Sequential
    rec = recommend(Request("finetune", task="digits-cnn"), Measurements(1437, head=head))
    groups, mults, _ = build_param_groups(model, rec.config["layer_lr"])
    assert mults == [1.0, 0.1]
    head_params = {id(p) for p in model[8].parameters()}
    assert {id(p) for p in groups[0]["params"]} == head_params
    assert len(groups[1]["params"]) == sum(1 for _ in model.parameters()) - len(head_params)
    assert all(isinstance(p, torch.nn.Parameter) for p in groups[1]["params"])


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ConfigError, match="--scenario='vision'"):
        recommend(Request("vision"))
    with pytest.raises(ConfigError, match="--batch"):
        recommend(Request("classification", batch=0))
    with pytest.raises(ConfigError, match="--gpus"):
        recommend(Request("classification", gpus=0))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_recommendation_parses_as_a_fit_config(scenario):
    from lrpilot.recommend._advise import validate

    for size, batch in ((3000, None), (200_000, 1024)):
        rec = recommend(Request(scenario, dataset_size=size, batch=batch, head="fc", epochs=10))
        assert validate(rec.config, size, 1) == []


# ------------------------------------------------------------------------- better_sweep
LRS = [10 ** (-5 + 0.1 * i) for i in range(60)]


def _curve(depth: float, noise: float = 0.0, seed: int = 0) -> list[float]:
    import random

    rnd = random.Random(seed)
    return [
        (2.0 - depth / (1 + math.exp(-4 * (math.log10(lr) + 2))) + max(0.0, 30 * (lr - 1)))
        * math.exp(noise * rnd.gauss(0, 1))
        for lr in LRS
    ]


def test_better_sweep_deeper_wins_either_order_and_equal_is_a_tie():
    a, b = (LRS, _curve(0.4, 0.01, 1), 2.0), (LRS, _curve(1.2, 0.01, 2), 2.0)
    assert better_sweep({"sgd": a, "adamw": b}).pick == "adamw"
    assert better_sweep({"adamw": b, "sgd": a}).pick == "adamw"
    same = better_sweep({"sgd": (LRS, _curve(0.8), 2.0), "adamw": (LRS, _curve(0.8), 2.0)})
    assert same.pick is None and same.reason.startswith("tie")


def test_better_sweep_unusable_sweeps():
    flat = (LRS, [2.0] * len(LRS), 2.0)
    ok = (LRS, _curve(0.8), 2.0)
    r = better_sweep({"sgd": flat, "adamw": ok})
    assert r.pick == "adamw" and r.verdicts["sgd"] == "flat" and math.isnan(r.scores["sgd"])
    assert better_sweep({"sgd": flat, "adamw": flat}).pick is None
    nan_at_once = (LRS, [2.0, 1.9, *([math.nan] * (len(LRS) - 2))], 2.0)
    assert better_sweep({"sgd": nan_at_once, "adamw": ok}).pick == "adamw"
    with pytest.raises(ConfigError, match="2 sweeps"):
        better_sweep({"sgd": ok})


def test_better_sweep_on_recorded_benchmark_sweeps():
    """digits-mlp, finder seed 0 (bench/results/finder_quality_curves.json): AdamW's sweep
    reaches a much lower loss; the grid oracles agree (AdamW ahead by 0.2-0.7 point)."""
    curves = json.loads((ROOT / "bench/results/finder_quality_curves.json").read_text())

    def sweep(row):
        (c,) = [v for k, v in curves.items() if k.startswith(f"f2|{row}|0|")]
        return c["lrs"], [math.nan if v is None else v for v in c["losses"]], c["initial_loss"]

    r = better_sweep({"sgd": sweep("digits-mlp"), "adamw": sweep("digits-mlp/adamw")})
    assert r.pick == "adamw" and r.verdicts == {"sgd": "ok", "adamw": "ok"}


def test_knobs_are_written_only_where_fit_supports_them():
    req = Request("classification", dataset_size=50_000)
    bare = recommend(req).config
    assert "loss" not in bare and "no_decay" not in bare["optimizer"]
    full = recommend(req, supports=frozenset({"no_decay", "label_smoothing"})).config
    assert full["loss"] == {"label_smoothing": 0.1}
    assert full["optimizer"]["no_decay"] == "auto"
    # not for a task whose loss is not cross-entropy, nor for regression
    m = Measurements(50_000, cross_entropy=False)
    assert "loss" not in recommend(req, m, supports=frozenset({"label_smoothing"})).config
    reg = recommend(
        Request("regression", dataset_size=50_000), supports=frozenset({"label_smoothing"})
    )
    assert "loss" not in reg.config
