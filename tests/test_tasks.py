import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrpilot.cli import main
from lrpilot.errors import ConfigError
from lrpilot.tasks import Task, get_task, list_tasks


def test_builtin_tasks_listed():
    assert list_tasks() == ["digits-cnn", "mnist1d-cnn", "mnist1d-mlp"]


@pytest.mark.parametrize(
    ("name", "n_train", "n_val"),
    [("digits-cnn", 1437, 360), ("mnist1d-cnn", 4000, 1000), ("mnist1d-mlp", 4000, 1000)],
)
def test_builtin_task_shapes_and_forward(name, n_train, n_val):
    task = get_task(name)
    assert (len(task.train_set), len(task.val_set)) == (n_train, n_val)
    x, y = task.sample()
    torch.manual_seed(0)
    model = task.build_model()
    out = model(x.unsqueeze(0))
    assert out.shape == (1, 10)
    loss = task.loss_fn(out, y.unsqueeze(0))
    assert torch.isfinite(loss)
    labels = torch.stack([task.train_set[i][1] for i in range(len(task.train_set))])
    assert set(labels.tolist()) == set(range(10))


def test_unknown_task_lists_valid_names():
    with pytest.raises(ConfigError, match="digits-cnn, mnist1d-cnn, mnist1d-mlp"):
        get_task("imagenet")


def test_module_function_task_spec():
    task = get_task("lrpilot.tasks.builtin:mnist1d_mlp")
    assert isinstance(task, Task) and task.name == "mnist1d-mlp"
    with pytest.raises(ConfigError, match=r"has no attribute .nope."):
        get_task("lrpilot.tasks.builtin:nope")
    with pytest.raises(ConfigError, match="cannot import"):
        get_task("no_such_module_xyz:f")


def test_tasks_cli_lists_sizes(capsys):
    assert main(["tasks", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"mnist1d-cnn"' in out and '"train": 4000' in out


LOCAL_TASK = """
import torch
from torch import nn
from torch.utils.data import TensorDataset
from lrpilot.tasks import Task

def build():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(name="local", build_model=lambda: nn.Linear(4, 2),
                train_set=TensorDataset(x[:256], y[:256]), val_set=TensorDataset(x[256:], y[256:]),
                loss_fn=nn.functional.cross_entropy,
                defaults={"batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.1}})
"""


def test_console_script_finds_a_task_module_in_the_current_directory(tmp_path):
    (tmp_path / "my_local_task.py").write_text(LOCAL_TASK)
    script = Path(sys.executable).parent / "lrpilot"  # the installed console script
    if not script.exists():
        pytest.skip(f"no console script at {script}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(script), "find", "--task", "my_local_task:build", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["task"] == "local"


def test_task_factory_from_a_file_path(tmp_path):
    """`path/to/file.py:function` loads the file as a module (issue 21)."""
    path = tmp_path / "sub dir" / "my_file_task.py"
    path.parent.mkdir()
    path.write_text(LOCAL_TASK)
    task = get_task(f"{path}:build")
    assert isinstance(task, Task) and task.name == "local" and len(task.train_set) == 256
    assert type(get_task(f"{path}:build").build_model()) is type(task.build_model())
    with pytest.raises(ConfigError, match=r"is not a \.py file"):
        get_task(f"{tmp_path / 'missing.py'}:build")
    with pytest.raises(ConfigError, match=r"has no attribute 'nope'"):
        get_task(f"{path}:nope")


def test_task_factory_checked_before_it_is_called(tmp_path, monkeypatch):
    """Refused without a call: built-ins, required parameters, a non-Task return annotation."""
    calls = tmp_path / "calls.txt"
    (tmp_path / "guarded_task.py").write_text(
        "from pathlib import Path\n"
        f"CALLS = Path({str(calls)!r})\n"
        "def needs(x):\n    CALLS.write_text('called')\n"
        "def annotated() -> dict:\n    CALLS.write_text('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, needle in [
        ("os:system", "built-in function"),
        ("sys:exit", "built-in function"),
        ("guarded_task:needs", r"required parameters \(x\)"),
        ("guarded_task:annotated", "annotated to return 'dict'"),
        (":", "with both parts"),
        ("os:", "with both parts"),
        ("os:1x", "is not a function name"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            get_task(spec)
    assert not calls.exists()


def test_readme_own_task_example_runs(tmp_path):
    """The README's "Your own task" example, written to a file, loads by file path."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n# my_task.py\n(.*?)```", readme, re.S)
    assert code, "README lost its own-task example"
    (tmp_path / "my_task.py").write_text(code.group(1))
    task = get_task(f"{tmp_path / 'my_task.py'}:make")
    from lrpilot.train import parse_config

    cfg = parse_config({"task": f"{tmp_path / 'my_task.py'}:make"})
    assert task.name == "my-task" and cfg.optimizer.name == "adamw" and cfg.epochs == 10


@pytest.mark.parametrize("name", ["digits-cnn", "mnist1d-cnn", "mnist1d-mlp"])
def test_registered_metadata_matches_the_built_task(name):
    from lrpilot.tasks import TaskInfo, task_info

    assert task_info(name) == TaskInfo.of(get_task(name))


def test_a_task_registered_without_metadata_is_measured():
    from lrpilot.tasks import TaskInfo, register_task, task_info
    from lrpilot.tasks.base import _INFO, _REGISTRY

    try:
        register_task("mlp-copy", lambda: get_task("mnist1d-mlp"))
        info = task_info("mlp-copy")
        assert info == TaskInfo.of(get_task("mnist1d-mlp")) and info.train == 4000
        with pytest.raises(ConfigError, match="its info is named 'mnist1d-mlp'"):
            register_task("mlp-copy", get_task, info=task_info("mnist1d-mlp"))
    finally:
        _REGISTRY.pop("mlp-copy", None)
        _INFO.pop("mlp-copy", None)


def test_listing_the_tasks_builds_no_dataset_and_imports_no_torch():
    code = (
        "import sys; from lrpilot.cli import main; main(['tasks', '--json']); "
        "print(sorted(m for m in ('torch', 'numpy', 'sklearn', 'mnist1d') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    listing, imported = proc.stdout.strip().rsplit("\n", 1)
    rows = json.loads(listing)
    assert [r["name"] for r in rows] == list_tasks() and rows[0]["train"] == 1437
    assert imported == "[]"
