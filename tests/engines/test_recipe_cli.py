"""The command line every recipe shares: flags, overrides, exit codes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from eqmar.engines.cli import COMMON_FIELDS, add_experiment_arguments, collect_overrides, run_experiment_cli
from eqmar.engines.config import TRAINING_FIELDS, TrainingConfig, with_overrides
from tests.helpers import ROOT, load_script

RECIPES = sorted((ROOT / "recipes").glob("*.py"))


@dataclass
class _Config:
    data: Path | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(output_dir=Path("out"), arms=("plain",)))

    @classmethod
    def published(cls, data, **overrides):
        return with_overrides(cls(data=Path(data)), **overrides)

    @classmethod
    def demo_default(cls, **overrides):
        return with_overrides(cls(), **overrides)


def _run(cfg: _Config) -> dict:
    if cfg.training.epochs < 0:
        raise ValueError("epochs must be >= 0")
    return {"cfg": cfg}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = add_experiment_arguments(argparse.ArgumentParser(), "runs/x", patches=False, iterations=False)
    return parser.parse_args(argv)


def test_only_the_flags_a_user_sets_become_overrides() -> None:
    args = _parse(["--epochs", "3", "--lambda", "0.5", "--arm", "eqreg", "--arm", "eqreg", "--no-progress"])
    overrides = collect_overrides(args)
    assert overrides == {
        "epochs": 3, "weight": 0.5, "arms": ("eqreg",), "output_dir": Path("runs/x"), "resume": False,
        "progress": False,
    }


def test_run_experiment_cli_builds_the_demo_or_published_config(tmp_path, capsys) -> None:
    args = _parse(["--epochs", "2"])
    assert run_experiment_cli(args, _Config, _run, collect_overrides(args),
                              lambda r, c: f"epochs={r['cfg'].training.epochs}") == 0
    assert "epochs=2" in capsys.readouterr().out
    args = _parse(["--data", str(tmp_path)])
    assert run_experiment_cli(args, _Config, _run, collect_overrides(args), lambda r, c: f"data={c.data}") == 0
    assert f"data={tmp_path}" in capsys.readouterr().out


def test_training_settings_live_in_one_place() -> None:
    """The common flags are TrainingConfig fields by name, so a rename there is the only change."""
    assert set(COMMON_FIELDS) <= set(TRAINING_FIELDS)
    parser = add_experiment_arguments(argparse.ArgumentParser(), "runs/x")
    dests = {action.dest for action in parser._actions}
    assert set(COMMON_FIELDS) <= dests
    cfg = with_overrides(_Config(), epochs=4, weight=0.25, data=Path("d"))
    assert (cfg.training.epochs, cfg.training.weight, cfg.data) == (4, 0.25, Path("d"))
    assert cfg.training.arms == ("plain",)  # untouched settings keep the task's defaults
    with pytest.raises(TypeError):
        with_overrides(_Config(), no_such_setting=1)


def test_threads_zero_means_torch_default() -> None:
    assert collect_overrides(_parse(["--threads", "0"]))["threads"] is None
    assert collect_overrides(_parse(["--threads", "2"]))["threads"] == 2


@pytest.mark.parametrize("argv", [["--data", "/no/such/folder"], ["--epochs", "-1"]])
def test_user_errors_exit_2_with_one_line(argv, capsys) -> None:
    args = _parse(argv)
    assert run_experiment_cli(args, _Config, _run, collect_overrides(args), lambda r, c: "") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# mar_seeds.py drives mar_deeplesion.py and hands it the shared flags after "--"
@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.name not in ("bootstrap.py", "mar_seeds.py")],
                         ids=lambda p: p.name)
def test_every_recipe_has_help_and_the_shared_flags(recipe: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _main(recipe)(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--out", "--arm", "--epochs", "--lambda", "--seed", "--resume", "--nproc"):
        assert flag in text, f"{recipe.name} lacks {flag}"


def _main(recipe: Path):
    return load_script(recipe).main
