"""Re-running some arms into an output directory keeps the other arms' results; numbers precede figures."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest

from eqmar.engines import format_equivariance_table, merge_earlier_arms, note_earlier_arms, with_overrides
from eqmar.engines import report as report_module
from eqmar.equivariance import EquivarianceReport
from eqmar.metrics import MARScores

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ORDER = ("plain", "aug", "eqreg", "strict")
CONFIG = {
    "epochs": 2, "seed": 0, "lr": 1e-3, "betas": [0.5, 0.999], "meta": {"rate": 0.3, "data": "bundled"},
    "arms": ["plain", "aug", "eqreg"], "resume": False, "progress": True, "checkpoint_interval": 0, "workers": 0,
    "threads": None, "device": "auto", "output_dir": "runs/a",
}
ASIDE = re.compile(r"results\.\d{8}T\d{6}Z(-\d+)?\.json")


def _summary(value: float) -> dict:
    return {"metrics": {"PSNR": value}, "train_seconds": 1.0, "equivariance": None}


def _write_earlier(out: Path, config: dict, arms: tuple[str, ...] = ("plain", "aug", "eqreg")) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"config": config, "arms": {arm: _summary(20.0 + i) for i, arm in enumerate(arms)}})
    (out / "results.json").write_text(text)
    return text


def _aside(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if ASIDE.fullmatch(p.name))


# -- the helper --------------------------------------------------------------------------------------------


def test_same_settings_keep_the_earlier_arms_in_arm_order(tmp_path, caplog) -> None:
    _write_earlier(tmp_path, CONFIG)
    # only run settings differ: which arms, resume, progress, checkpoints, workers, threads, device, output
    now = {
        **CONFIG, "arms": ("strict",), "resume": True, "progress": False, "checkpoint_interval": 50, "workers": 4,
        "threads": 1, "device": "cuda", "output_dir": "elsewhere", "betas": (0.5, 0.999),
    }
    with caplog.at_level(logging.WARNING, logger="eqmar.report"):
        arms = merge_earlier_arms(tmp_path, now, {"strict": _summary(30.0)}, order=ORDER)
    assert list(arms) == ["plain", "aug", "eqreg", "strict"]
    assert all(arms[arm]["from_earlier_run"] is True for arm in ("plain", "aug", "eqreg"))
    assert "from_earlier_run" not in arms["strict"] and arms["plain"]["metrics"]["PSNR"] == 20.0
    assert not caplog.records and not _aside(tmp_path)
    note = note_earlier_arms("| table |", arms, labels={"strict": "strict (P4)"})
    assert note.startswith("| table |\n\n") and "plain, aug, eqreg" in note.splitlines()[-1]
    assert note_earlier_arms("| table |", {"strict": _summary(30.0)}) == "| table |"


def test_rerun_arms_replace_earlier_ones(tmp_path) -> None:
    _write_earlier(tmp_path, CONFIG, arms=("eqreg", "plain"))
    arms = merge_earlier_arms(tmp_path, CONFIG, {"eqreg": _summary(40.0), "aug": _summary(41.0)}, order=ORDER)
    assert list(arms) == ["plain", "aug", "eqreg"]
    assert arms["eqreg"]["metrics"]["PSNR"] == 40.0 and "from_earlier_run" not in arms["eqreg"]
    assert arms["plain"]["from_earlier_run"]
    assert merge_earlier_arms(tmp_path / "new", CONFIG, {"aug": _summary(1.0)}, order=ORDER) == {"aug": _summary(1.0)}


def test_the_earlier_machine_goes_with_each_kept_arm(tmp_path) -> None:
    (tmp_path / "results.json").write_text(
        json.dumps({"config": CONFIG, "machine": {"torch": "x"}, "arms": {"plain": _summary(20.0)}})
    )
    arms = merge_earlier_arms(tmp_path, CONFIG, {"aug": _summary(1.0)}, order=ORDER)
    assert arms["plain"]["machine"] == {"torch": "x"} and "machine" not in arms["aug"]


def test_run_only_settings_are_ignored_when_nested_and_ints_equal_floats(tmp_path, caplog) -> None:
    """Tasks nest their own config (deraining: ``meta.derain``); its arms/threads/... do not matter either."""
    nested = {**CONFIG, "lr": 1, "meta": {"derain": {"arms": ["plain"], "threads": 1, "progress": True, "epochs": 5}}}
    _write_earlier(tmp_path, nested)
    now = {**CONFIG, "lr": 1.0, "meta": {"derain": {"arms": ["strict"], "threads": 2, "progress": False, "epochs": 5}}}
    with caplog.at_level(logging.WARNING, logger="eqmar.report"):
        arms = merge_earlier_arms(tmp_path, now, {"strict": _summary(30.0)}, order=ORDER)
    assert list(arms) == ["plain", "aug", "eqreg", "strict"] and not caplog.records
    changed = {**now, "meta": {"derain": {**now["meta"]["derain"], "epochs": 6}}}
    with caplog.at_level(logging.WARNING, logger="eqmar.report"):
        assert list(merge_earlier_arms(tmp_path, changed, {"strict": _summary(30.0)}, order=ORDER)) == ["strict"]
    assert "(meta.derain.epochs)" in caplog.records[-1].getMessage() and _aside(tmp_path)


@pytest.mark.parametrize(
    ("arms", "check", "reason"),
    [
        (("plain", "custom"), None, "does not know: custom"),
        (("plain",), lambda s: s["metrics"]["SSIM"], "KeyError"),  # an arm entry of another format
    ],
)
def test_arms_this_run_cannot_tabulate_set_the_earlier_file_aside(tmp_path, caplog, arms, check, reason) -> None:
    text = _write_earlier(tmp_path, CONFIG, arms=arms)
    with caplog.at_level(logging.WARNING, logger="eqmar.report"):
        merged = merge_earlier_arms(tmp_path, CONFIG, {"aug": _summary(1.0)}, order=ORDER, check=check)
    assert list(merged) == ["aug"]
    [aside] = _aside(tmp_path)
    assert aside.read_text() == text and reason in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    ("change", "named"),
    [({"epochs": 3}, "epochs"), ({"meta": {"rate": 0.5, "data": "bundled"}}, "meta.rate"), ({"group": "D4"}, "group")],
)
def test_other_settings_are_not_merged_and_the_earlier_file_is_kept_aside(tmp_path, caplog, change, named) -> None:
    text = _write_earlier(tmp_path, CONFIG)
    with caplog.at_level(logging.WARNING, logger="eqmar.report"):
        arms = merge_earlier_arms(tmp_path, {**CONFIG, **change}, {"strict": _summary(30.0)}, order=ORDER)
    assert list(arms) == ["strict"]
    [aside] = _aside(tmp_path)
    assert aside.read_text() == text and not (tmp_path / "results.json").exists()
    [record] = caplog.records
    assert f"({named})" in record.getMessage() and aside.name in record.getMessage()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"config": {}}', '{"config": {}, "arms": {"plain": 3}}'])
def test_an_unreadable_earlier_file_is_moved_aside_without_failing(tmp_path, caplog, content) -> None:
    for expected in (1, 2):  # twice within a second: the second copy gets its own name
        (tmp_path / "results.json").write_text(content)
        with caplog.at_level(logging.WARNING, logger="eqmar.report"):
            assert list(merge_earlier_arms(tmp_path, CONFIG, {"aug": _summary(1.0)}, order=ORDER)) == ["aug"]
        assert len(_aside(tmp_path)) == expected and all(p.read_text() == content for p in _aside(tmp_path))
    assert "cannot read it" in caplog.records[0].getMessage()


def test_only_rank_0_moves_files(tmp_path, monkeypatch) -> None:
    _write_earlier(tmp_path, CONFIG)
    monkeypatch.setattr(report_module, "is_main_process", lambda: False)
    assert list(merge_earlier_arms(tmp_path, {**CONFIG, "epochs": 9}, {"aug": _summary(1.0)})) == ["aug"]
    assert (tmp_path / "results.json").exists() and not _aside(tmp_path)


def test_reports_and_mar_scores_come_back_from_their_json_form() -> None:
    report = EquivarianceReport(group="C4", elements=[1, 2, 3], layers={"a": 0.5, "b": 0.25}, output=0.125, samples=4)
    restored = EquivarianceReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert restored == report
    table = format_equivariance_table({"plain": report.to_dict(), "aug": report, "none": None})
    assert "| plain | 2 | 0.3750 | 0.1250 |" in table and "| aug | 2 |" in table and "none" not in table
    scores = MARScores(psnr={"G1": 30.0, "average": math.nan}, ssim={"G1": 0.9, "average": math.nan},
                       count={"G1": 3, "average": 0})
    back = MARScores.from_dict(json.loads(json.dumps(scores.as_dict())))
    assert back.as_dict()["G1"] == scores.as_dict()["G1"] and math.isnan(back.psnr["average"])


# -- a workflow end to end ----------------------------------------------------------------------------------


def _classification(out: Path, arms: tuple[str, ...], **overrides):
    from eqmar.apps.classify import ClassificationConfig

    settings = dict(output_dir=out, arms=arms, epochs=1, batch_size=8, max_train=16, max_eval=16, angle_step=90.0,
                    random_draws=1, channels=(4, 8, 8), progress=False)
    return with_overrides(ClassificationConfig(), **{**settings, **overrides})


def test_a_second_arm_into_the_same_directory_keeps_the_first(tmp_path) -> None:
    from eqmar.apps.classify import run_classification_experiment

    out = tmp_path / "run"
    first = run_classification_experiment(_classification(out, ("eqreg",)))
    second = run_classification_experiment(_classification(out, ("plain",), resume=True))
    written = json.loads((out / "results.json").read_text())
    assert written == json.loads(json.dumps(second))
    assert list(written["arms"]) == ["plain", "eqreg"]
    assert written["arms"]["eqreg"]["from_earlier_run"] is True and "from_earlier_run" not in written["arms"]["plain"]
    assert written["arms"]["eqreg"]["metrics"] == json.loads(json.dumps(first["arms"]["eqreg"]["metrics"]))
    markdown = (out / "results.md").read_text()
    for row in ("| plain |", "| eqreg |"):
        assert markdown.count(row) == 2  # arm table and equivariance table
    assert "earlier run" in markdown and "eqreg" in markdown.split("earlier run")[1].splitlines()[0]
    assert not _aside(out)


def test_results_are_written_before_a_figure_fails(tmp_path, monkeypatch) -> None:
    from eqmar.apps.classify import run_classification_experiment, workflow

    def broken_plot(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(workflow, "plot_accuracy_curves", broken_plot)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="no display"):
        run_classification_experiment(_classification(out, ("plain",)))
    assert list(json.loads((out / "results.json").read_text())["arms"]) == ["plain"]
    assert "| plain |" in (out / "results.md").read_text()


def _broken(*args, **kwargs):
    raise RuntimeError("no display")


def test_restoration_merges_arms_and_writes_results_before_its_figures(tmp_path, monkeypatch) -> None:
    import eqmar.equivariance
    from eqmar.apps.inpaint import InpaintingConfig, run_inpainting_experiment

    out = tmp_path / "run"
    tiny = dict(output_dir=out, epochs=1, iters_per_epoch=2, batch_size=2, patch_size=32, test_size=32, progress=False)
    run_inpainting_experiment(with_overrides(InpaintingConfig(), arms=("strict",), **tiny))
    monkeypatch.setattr(eqmar.equivariance, "plot_equivariance_report", _broken)
    with pytest.raises(RuntimeError, match="no display"):
        run_inpainting_experiment(with_overrides(InpaintingConfig(), arms=("plain",), **tiny))
    written = json.loads((out / "results.json").read_text())
    assert list(written["arms"]) == ["plain", "strict"] and written["arms"]["strict"]["from_earlier_run"] is True
    markdown = (out / "results.md").read_text()
    assert "| plain |" in markdown and markdown.count("| strict (P4) |") == 2
    assert "same settings: strict (P4)." in markdown


def test_mar_merges_arms_and_writes_results_before_its_figures(tmp_path, monkeypatch) -> None:
    from eqmar.apps.mar import workflow
    from eqmar.apps.mar.workflow import MARExperimentConfig, run_mar_experiment

    demo = {"cache": str(tmp_path / "data"), "image_size": 64, "views": 72, "train_images": 2, "test_images": 1,
            "seed": 0}
    tiny = dict(output_dir=tmp_path / "run", num_stages=2, features=8, num_filters=8, num_res_blocks=1, epochs=1,
                iters_per_epoch=1, batch_size=2, patch_size=32, train_masks=(0, 1), demo=demo, progress=False)
    run_mar_experiment(MARExperimentConfig.demo_default(arms=("eqreg",), **tiny))
    monkeypatch.setattr(workflow, "plot_mar_examples", _broken)
    with pytest.raises(RuntimeError, match="no display"):
        run_mar_experiment(MARExperimentConfig.demo_default(arms=("plain",), **tiny))
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert list(written["arms"]) == ["plain", "eqreg"] and written["arms"]["eqreg"]["from_earlier_run"] is True
    assert written["arms"]["eqreg"]["metrics"]["average"]["n"] == 10  # 1 test image x 10 test masks
    for row in ("| LI |", "| plain |", "| eqreg |"):
        assert row in written["table"]
    assert written["table"] in (tmp_path / "run" / "results.md").read_text()


def test_an_earlier_file_that_cannot_be_renamed_is_reported_not_fatal(tmp_path, caplog, monkeypatch) -> None:
    _write_earlier(tmp_path, CONFIG)

    def refuse(self, target):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "rename", refuse)
    with caplog.at_level(logging.WARNING, logger="eqmar.report"):
        arms = merge_earlier_arms(tmp_path, {**CONFIG, "epochs": 9}, {"aug": _summary(1.0)}, order=ORDER)
    assert list(arms) == ["aug"]
    [record] = caplog.records
    assert "(epochs)" in record.getMessage() and "could not be renamed (PermissionError" in record.getMessage()
    assert "may be overwritten" in record.getMessage()
