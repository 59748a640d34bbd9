"""The rules of thumb behind ``lrpilot recommend`` and ``lrpilot check``, as one table.

Every value the recommender writes and every threshold the checker uses is read from
:data:`RULES` by id (:func:`rule`, :func:`value`); nothing else in this package holds a
number from the guides. Each :class:`Rule` says where it comes from (``source``) and on
what it rests (``basis``):

* ``"assumed"``: a rule of thumb from a guide, a paper or a library's default, not
  measured on the user's task. A measurement replaces it where ``replaced_by`` names one.
* ``"measured"``: a measurement lrpilot makes on the task (``--task``): its value says
  what is measured and which rules it replaces.

The README's rules table is :func:`render_markdown` of this table, kept in step by
``tools/readme_rules.py`` (``tests/test_recommend_rules.py`` checks it).

>>> rule("lr.sgd").value
(0.008, 0.01, 0.02)
>>> rule("lr.nope")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
lrpilot.errors.ConfigError: unknown rule id 'lr.nope'; valid: batch.bn_min, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lrpilot.errors import ConfigError

BASES = ("assumed", "measured")


@dataclass(frozen=True)
class Rule:
    """One row of the rules table.

    Attributes:
        id: stable identifier (``topic.name``) that reasons and warnings cite.
        condition: when the rule applies (the scenario or the situation).
        value: the number, range or setting the rule gives (data the code reads).
        text: the rule in one sentence.
        source: where it comes from (paper, library default or documentation).
        basis: ``"assumed"`` (a rule of thumb) or ``"measured"`` (a measurement on the task).
        replaced_by: the id of the measurement that replaces it with ``--task``, if any.
    """

    id: str
    condition: str
    value: Any
    text: str
    source: str
    basis: str = "assumed"
    replaced_by: str = ""


_GOYAL = "Goyal et al. 2017, Accurate, Large Minibatch SGD (arXiv:1706.02677)"
_MALLADI = "Malladi et al. 2022, On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"

RULES: tuple[Rule, ...] = (
    # ---------------------------------------------------------------- scenario -> strategy
    Rule(
        "scenario.small_data",
        "classification, text, finetune or regression with dataset_size < value",
        10_000,
        "small dataset, risk of overfitting: one-cycle schedule plus early stopping",
        "scenario table of issue 19; Smith & Topin 2017, Super-Convergence (one-cycle); "
        "the 10 000-sample threshold is lrpilot's",
    ),
    Rule(
        "scenario.classification",
        "classification, dataset_size >= scenario.small_data",
        "cosine",
        "large-scale image classification: cosine decay with linear warmup",
        "Loshchilov & Hutter 2017, SGDR (cosine); " + _GOYAL + " (warmup)",
    ),
    Rule(
        "scenario.detection",
        "detection",
        {"schedule": "multistep", "milestones": (2 / 3, 8 / 9), "gamma": 0.1},
        "multi-step decay: LR x0.1 at 2/3 and at 8/9 of the run",
        "Detectron2 1x schedule (steps at 60k and 80k of 90k iterations)",
    ),
    Rule(
        "scenario.segmentation",
        "segmentation",
        {"schedule": "multistep", "milestones": (2 / 3, 8 / 9), "gamma": 0.1},
        "multi-step decay, as for detection",
        "scenario table of issue 19; Detectron2 1x schedule (Mask R-CNN)",
    ),
    Rule(
        "scenario.text",
        "text and sequences",
        {"optimizer": "adamw", "schedule": "cosine"},
        "AdamW with warmup and cosine decay",
        "Loshchilov & Hutter 2019, Decoupled Weight Decay (AdamW); Vaswani et al. 2017 (warmup)",
    ),
    Rule(
        "scenario.finetune",
        "finetune (a pretrained backbone and a new head)",
        {"optimizer": "adamw", "backbone": 0.1, "head": 1.0},
        "AdamW; layer-wise LR: backbone at 0.1x the head's LR",
        "Howard & Ruder 2018, ULMFiT (discriminative fine-tuning); AdamW as in Hugging Face "
        "Trainer; the 0.1 factor is assumed",
    ),
    Rule(
        "scenario.regression",
        "regression",
        {"optimizer": "adamw", "schedule": "cosine"},
        "AdamW with warmup and cosine decay (no guide entry: lrpilot's default)",
        "lrpilot default (no published scenario rule)",
    ),
    # ------------------------------------------------------------------------- optimizer
    Rule(
        "optimizer.default",
        "classification, detection, segmentation (others: their scenario rule)",
        "sgd",
        "SGD with momentum for vision scenarios",
        _GOYAL + "; Detectron2 defaults (SGD, momentum 0.9)",
    ),
    Rule(
        "lr.sgd",
        "SGD, total batch in batch.total's range (low, point, high)",
        (0.008, 0.01, 0.02),
        "SGD starts at 0.008-0.02",
        "rules of thumb of issue 19; Ultralytics default lr0=0.01 for SGD",
        replaced_by="measure.finder",
    ),
    Rule(
        "lr.adamw",
        "AdamW, total batch in batch.total's range (low, point, high)",
        (3e-4, 1e-3, 1e-3),
        "AdamW starts at 3e-4 to 1e-3",
        "rules of thumb of issue 19; Ultralytics default lr0=0.001 for Adam",
        replaced_by="measure.finder",
    ),
    Rule(
        "lr.adamw_text",
        "AdamW in the text scenario (transformers)",
        3e-4,
        "the low end of the AdamW range for transformers",
        "rules of thumb of issue 19 (3e-4); Vaswani et al. 2017 peak LRs are of this order",
        replaced_by="measure.finder",
    ),
    Rule(
        "momentum.sgd",
        "SGD",
        0.9,
        "SGD momentum 0.9",
        _GOYAL,
    ),
    Rule(
        "weight_decay.sgd",
        "SGD",
        5e-4,
        "weight decay 5e-4 with SGD",
        "He et al. 2016, Deep Residual Learning (CIFAR-10 setting)",
    ),
    Rule(
        "weight_decay.adamw",
        "AdamW",
        1e-2,
        "weight decay 0.01 with AdamW",
        "torch.optim.AdamW default; Loshchilov & Hutter 2019",
    ),
    Rule(
        "weight_decay.no_decay",
        "weight decay > 0",
        "norm and bias parameters",
        "exclude biases and normalisation weights from weight decay",
        "timm param_groups_weight_decay; Hugging Face Trainer get_decay_parameter_names",
    ),
    Rule(
        "regularisation.label_smoothing",
        "classification and finetune with a cross-entropy loss (written when lrpilot fit has "
        "loss.label_smoothing)",
        0.1,
        "label smoothing 0.1",
        "Szegedy et al. 2016, Rethinking the Inception Architecture (label smoothing 0.1); "
        "timm train.py --smoothing default 0.1",
    ),
    Rule(
        "optimizer.plateau_switch",
        "Adam has plateaued late in training",
        "sgd",
        "switch to SGD for the last phase (advice only: lrpilot fit runs one optimizer)",
        "Keskar & Socher 2017, SWATS (Improving Generalization by Switching from Adam to SGD)",
    ),
    # ----------------------------------------------------------------------------- batch
    Rule(
        "batch.total",
        "total batch (batch_size x accumulate x GPUs) (low, point, high)",
        (32, 64, 128),
        "keep the total batch at 32-128",
        "rules of thumb of issue 19",
        replaced_by="measure.noise_scale",
    ),
    Rule(
        "batch.bn_min",
        "a model with BatchNorm",
        4,
        "no BatchNorm with fewer than 4 samples per device (use GroupNorm)",
        "Wu & He 2018, Group Normalization (BatchNorm error grows at small per-device batch)",
    ),
    Rule(
        "scaling.sgd",
        "SGD, total batch changed from the one the LR was set for",
        {"rule": "linear", "conservative": 0.1},
        "scale the LR linearly with the batch, trimmed by 10% (10-15%) when it grows",
        _GOYAL + " (linear rule); trim: rules of thumb of issue 19",
    ),
    Rule(
        "scaling.adamw",
        "Adam/AdamW, total batch changed from the one the LR was set for",
        {"rule": "sqrt", "conservative": 0.1},
        "scale the LR with the square root of the batch, trimmed by 10% when it grows",
        _MALLADI + " (square-root rule); trim: rules of thumb of issue 19",
    ),
    Rule(
        "warmup.large_batch",
        "total batch above batch.total's high end",
        3,
        "warmup of at least 3 epochs with a large batch",
        _GOYAL + " (5 epochs at batch 8192); at least 3: rules of thumb of issue 19",
    ),
    Rule(
        "warmup.default",
        "cosine schedules at an ordinary batch (epochs, largest fraction of the run)",
        (5, 0.1),
        "linear warmup of 5 epochs, at most 10% of the run",
        "timm train.py --warmup-epochs default 5; the 10% cap is lrpilot's",
    ),
    # ------------------------------------------------------------------------ run length
    Rule(
        "epochs.default",
        "no --epochs and no task default",
        30,
        "30 epochs",
        "lrpilot default (no published rule)",
    ),
    Rule(
        "early_stopping.patience",
        "scenario.small_data",
        10,
        "stop after 10 epochs without a better validation loss, restore the best",
        "lrpilot default (no published rule)",
    ),
    # ---------------------------------------------------------------------- check limits
    Rule(
        "check.lr_factor",
        "lrpilot check: peak LR against lr.sgd / lr.adamw, scaled to the total batch",
        10.0,
        "an LR more than 10x outside the optimizer's usual range is flagged",
        "issue 19",
    ),
    Rule(
        "check.schedule_tolerance",
        "lrpilot check: schedule length against the run's optimizer steps",
        0.1,
        "a schedule ending more than 10% before or after the run is flagged",
        "lrpilot default (no published rule)",
    ),
    Rule(
        "check.hand_scaled",
        "lrpilot check: a changed batch whose LR was changed by hand",
        0.25,
        "an LR within 25% of the linear or square-root rule counts as scaled",
        "lrpilot default (no published rule)",
    ),
    # ---------------------------------------------------------------------- measurements
    Rule(
        "measure.finder",
        "--task: LR range test (lrpilot.finder), SGD and/or AdamW",
        "f(schedule) * r**kappa * lr_unstable",
        "the finder's suggested peak LR replaces the rule-of-thumb LR (one_cycle, cosine)",
        "lrpilot.finder.policy (calibrated in bench/finder_quality.py)",
        basis="measured",
    ),
    Rule(
        "measure.noise_scale",
        "--task and no --batch: gradient noise scale at initialisation",
        "B_simple = tr(Sigma)/|G|^2",
        "the total batch is capped at the power of two at or below B_simple",
        "McCandlish et al. 2018, An Empirical Model of Large-Batch Training; "
        "lrpilot.batch.noise_scale",
        basis="measured",
    ),
    Rule(
        "measure.memory",
        "--task: largest per-device batch that fits (lrpilot.batch.probe_memory)",
        "max per-device batch",
        "a per-device batch that does not fit is split with accumulate",
        "lrpilot.batch.memory (CUDA out-of-memory search, CPU peak-RSS fit)",
        basis="measured",
    ),
    Rule(
        "measure.optimizer",
        "--task --optimizer auto: finder sweeps for SGD and AdamW from one initialisation",
        "lower log-loss reached in the sweep",
        "pick the optimizer whose sweep reached the lower loss (a tie keeps the scenario's)",
        "lrpilot.recommend._choice.better_sweep (bench/optimizer_choice.py)",
        basis="measured",
    ),
)

_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
assert len(_BY_ID) == len(RULES), "duplicate rule ids"


def rule(rule_id: str) -> Rule:
    """The rule with ``rule_id``; unknown ids raise ``ConfigError`` listing the valid ones."""
    if rule_id not in _BY_ID:
        raise ConfigError(f"unknown rule id {rule_id!r}; valid: {', '.join(sorted(_BY_ID))}")
    return _BY_ID[rule_id]


def value(rule_id: str) -> Any:
    """``rule(rule_id).value``."""
    return rule(rule_id).value


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def render_markdown() -> str:
    """The rules table as a Markdown table (what the README shows between its markers)."""
    lines = [
        "| id | condition | value | rule | source | basis |",
        "|---|---|---|---|---|---|",
    ]
    for r in RULES:
        basis = r.basis if not r.replaced_by else f"{r.basis}; replaced by `{r.replaced_by}`"
        cells = (f"`{r.id}`", r.condition, f"`{_fmt(r.value)}`", r.text, r.source, basis)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


README_BEGIN = "<!-- rules-table:begin (generated by tools/readme_rules.py) -->"
README_END = "<!-- rules-table:end -->"


def readme_section(readme: str) -> str | None:
    """The text between the README's rules-table markers (``None`` without them)."""
    start = readme.find(README_BEGIN)
    end = readme.find(README_END)
    if start < 0 or end < start:
        return None
    return readme[start + len(README_BEGIN) : end].strip("\n") + "\n"


def with_rules_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`render_markdown`."""
    start = readme.find(README_BEGIN)
    end = readme.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"README has no {README_BEGIN!r} ... {README_END!r} markers")
    head = readme[: start + len(README_BEGIN)]
    return head + "\n" + render_markdown() + readme[end:]
