"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart_block() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its quick-start block"
    return match.group(1)


def test_readme_quickstart_runs_and_trains(capsys):
    namespace: dict = {}
    exec(compile(_quickstart_block(), "README.md:quickstart", "exec"), namespace)
    found, model, task, scheduler = (
        namespace["found"],
        namespace["model"],
        namespace["task"],
        namespace["scheduler"],
    )
    assert found.verdict == "ok" and found.suggestion > 0
    assert scheduler.last_epoch == namespace["epochs"] * namespace["steps_per_epoch"]
    x, y = task.val_set.tensors
    import torch

    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.3  # chance is 0.1
