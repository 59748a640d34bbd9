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
    with pytest.raises(ConfigError, match="no callable"):
        get_task("lrpilot.tasks.builtin:nope")
    with pytest.raises(ConfigError, match="cannot import"):
        get_task("no_such_module_xyz:f")


def test_tasks_cli_lists_sizes(capsys):
    assert main(["tasks", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"mnist1d-cnn"' in out and '"train": 4000' in out
