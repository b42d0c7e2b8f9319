"""The ``bench/`` scripts: shared timing helpers, ``--help``, and smoke runs at their quickest settings.

The helper and ``--help`` tests run in-process and take seconds. The smoke runs start each script
as a user would (``python bench/<script>.py``, which is what puts ``bench/`` on the import path)
with tiny sizes and one repeat, on one torch thread, and check the JSON each writes; they are
marked slow because every script starts fresh interpreters (``bench_inference.py`` three of them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

BENCH = ROOT / "bench"
SCRIPTS = ("bench_eqreg_overhead", "bench_synthesis", "bench_scaling", "bench_inference")


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put ``bench/`` on ``sys.path`` as running a script there does."""
    monkeypatch.syspath_prepend(str(BENCH))
    return BENCH


def _run(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


# --------------------------------------------------------------------------------- _timing helpers
def test_alternate_runs_arms_in_order_and_drops_warmup(bench_path: Path) -> None:
    from _timing import alternate

    calls: list[tuple[str, int]] = []

    def arm(name: str, seconds: float):
        def run(i: int) -> float:
            calls.append((name, i))
            return seconds + i

        return run

    times = alternate({"a": arm("a", 1.0), "b": arm("b", 10.0)}, rounds=2, warmup=1)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert times == {"a": [2.0, 3.0], "b": [11.0, 12.0]}


def test_statistics_helpers(bench_path: Path) -> None:
    from _timing import machine_footer, markdown_table, median_seconds, per_round_ratios, quartiles, summary

    assert quartiles([2.0]) == (2.0, 2.0, 2.0)
    q1, median, q3 = quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (q1, median, q3) == (1.5, 3.0, 4.5)  # statistics.quantiles' exclusive method, as the docs' figures
    assert summary([3.0, 1.0, 2.0])["median"] == 2.0 and summary([3.0])["n"] == 1
    assert per_round_ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        per_round_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        quartiles([])
    assert median_seconds(lambda: None, 3) >= 0.0
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    footer = machine_footer({"cpu_count": 2, "load_average": None, "torch_threads": 1}, 0.5)
    assert footer == "CPU cores: 2, torch threads: 1, 1-min load average before/after: n/a/0.50"


# ------------------------------------------------------------------------------ script internals
def test_inference_memory_probe_and_geometry_tags(bench_path: Path) -> None:
    import torch
    from bench_inference import _geometry_tag, _MemoryProbe, _peak_rss_mb, _rss_now_mb, network_spec_for

    from eqmar.apps.mar.inference import model_geometry

    # the probe reads the process's peak RSS, which earlier tests in this process may have raised:
    # the block must lift the peak above that, whatever ran before
    block_mb = int(max(0.0, _peak_rss_mb() - _rss_now_mb())) + 64
    probe = _MemoryProbe(torch.device("cpu"))
    probe.start()
    # written, and above glibc's largest mmap threshold (32 MiB): fresh pages, never reused ones
    block = torch.ones(block_mb, 2**20 // 4)
    memory = probe.stop()
    del block
    assert memory["peak_rss_mb"] >= memory["rss_before_mb"] > 0
    assert memory["peak_delta_mb"] > block_mb - 16

    assert _geometry_tag(416, 640) == "640geo"
    for size, views in ((416, 640), (64, 32), (416, 320)):
        geometry = model_geometry({"geometry_tag": _geometry_tag(size, views), "image_size": size})
        assert (geometry.image_size, geometry.num_views) == (size, views)

    spec = network_spec_for("dicdnet")
    assert spec["kwargs"] == {"num_stages": 10, "features": 36, "num_filters": 32, "num_res_blocks": 3,
                                   "group_order": 4}
    assert network_spec_for("dicdnet", stages=1)["kwargs"]["num_stages"] == 1


def test_scaling_backbones_follow_the_recipe_configs(bench_path: Path) -> None:
    from bench_scaling import _backbone_arguments

    demo = {"features": 16, "num_filters": 16, "num_res_blocks": 2}
    assert _backbone_arguments("dicdnet-demo") == ("dicdnet", 3, demo)
    assert _backbone_arguments("dicdnet") == ("dicdnet", 10, {"features": 36, "num_filters": 32, "num_res_blocks": 3})
    assert _backbone_arguments("basicunet")[0] == "basicunet"
    with pytest.raises(ValueError):
        _backbone_arguments("resnet")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str, bench_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import importlib

    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])  # bench_eqreg_overhead.main reads sys.argv
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ smoke runs
@pytest.mark.slow
def test_bench_inference_smoke(tmp_path: Path) -> None:
    out = tmp_path / "inference.json"
    _run("bench_inference", "--device", "cpu", "--threads", "1", "--size", "32", "--views", "32", "--batches", "1", "2",
         "--stages", "1", "--repeats", "1", "--warmup", "0", "--e2e-repeats", "1", "--cli-runs", "1",
         "--json", str(out), "--markdown", str(tmp_path / "inference.md"))
    results = json.loads(out.read_text())
    assert {"settings", "machine", "device", "network", "forward", "end_to_end", "load_average_after"} <= set(results)
    assert [row["batch"] for row in results["forward"]] == [1, 2]
    for row in results["forward"]:
        assert row["threads"] == 1 and row["images_per_s"] > 0
        assert row["memory"]["peak_rss_mb"] > 0 and row["memory"]["peak_delta_mb"] >= 0
    e2e = results["end_to_end"]
    assert e2e["working_size"] == 32 and e2e["views"] == 32 and e2e["metal_pixels"] > 0
    assert {"first_slice_s", "slice_s", "li_s", "memory", "cli_wall_s"} <= set(e2e)
    assert "| batch |" in (tmp_path / "inference.md").read_text()


@pytest.mark.slow
def test_bench_inference_of_a_model_file(tmp_path: Path) -> None:
    """--model times the end-to-end path of that file (its geometry, patches and trace) and skips the forward table."""
    out = tmp_path / "inference.json"
    model = ROOT / "bundles" / "eqmar_mar" / "models" / "model.pt"
    _run("bench_inference", "--model", str(model), "--device", "cpu", "--threads", "1", "--e2e-repeats", "1",
         "--cli-runs", "0", "--json", str(out))
    results = json.loads(out.read_text())
    assert results["forward"] == [] and results["model"] == str(model)
    e2e = results["end_to_end"]
    assert e2e["working_size"] == 416 and e2e["views"] == 640 and e2e["trace_model"] == "line"  # the file's own
    assert e2e["metal_pixels"] > 0 and e2e["slice_s"]["median"] > 0


@pytest.mark.slow
def test_bench_scaling_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    _run("bench_scaling", "--quick", "--threads", "1", "--json", str(out), "--markdown", str(tmp_path / "scaling.md"))
    results = json.loads(out.read_text())
    (row,) = results["synthesis"]["rows"]
    assert {"image_size", "views", "bins", "cached_pair_s", "init_s", "prepare_image_s", "prepare_mask_s",
            "first_pair_s"} <= set(row)
    rows = results["training"]["rows"]
    assert [(r["backbone"], r["batch"]) for r in rows] == [
        ("dicdnet-demo", 1), ("dicdnet-demo", 2), ("basicunet", 1), ("basicunet", 2)]
    for r in rows:
        for key in ("plain_ms", "aug_ms", "eqreg_ms", "eqreg_over_plain", "eqreg_over_aug"):
            assert r[key]["n"] == 1 and r[key]["median"] > 0
    assert results["training"]["threads"] == 1
    assert "eqreg/plain" in (tmp_path / "scaling.md").read_text()


@pytest.mark.slow
def test_bench_synthesis_smoke(tmp_path: Path) -> None:
    out = tmp_path / "synthesis.json"
    completed = _run("bench_synthesis", "--skip-640geo", "--sizes", "64", "--views", "32", "--repeats", "1",
                     "--json", str(out))
    results = json.loads(out.read_text())
    assert set(results) == {"cpu_count", "device", "load_average_before", "scaling", "load_average_after"}
    assert results["device"] == "cpu"
    assert set(results["scaling"][0]) == {"image_size", "views", "bins", "cached_pair_s"}
    assert "| 64 | 32 | 99 |" in completed.stdout


@pytest.mark.slow
def test_bench_eqreg_overhead_smoke() -> None:
    completed = _run("bench_eqreg_overhead", "--backbone", "dicdnet", "--stages", "1", "--batch", "1", "--size", "32",
                     "--steps", "1", "--warmup", "0", "--threads", "1", "--decompose")
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("backbone=dicdnet batch=1+1 size=32 regularised layers=")
    assert any(line.startswith("median ratio (EQ-Reg / doubled batch without term):") for line in lines)
    assert lines[-1].startswith("median ratio (hooks only / doubled batch without term):")


def test_hooks_only_arm_runs_the_hooks_without_the_residual(bench_path: Path) -> None:
    """``--decompose``'s hooks-only arm: every hook fires, the term is exactly 0, and EQ-Reg is restored after."""
    import bench_eqreg_overhead as bench
    import torch

    setup = bench.training_setup("dicdnet", 16, 1, num_filters=4, features=8, num_res_blocks=1)
    x, y = setup.make_input(1), torch.rand(1, 1, 16, 16)
    setup.eqreg.register_hooks()
    with bench.hooks_only():
        setup.eqreg.pair((x, y), 1)
        setup.net(x.repeat(2, 1, 1, 1))
        assert len(setup.eqreg._residuals) == len(setup.eqreg.layers)
        assert float(setup.eqreg.pop_term()) == 0.0
    px, _ = setup.eqreg.pair((x, y), 1)
    setup.net(px)
    assert float(setup.eqreg.pop_term()) > 0
