"""Reliability of the synthesis CLI: SIGKILL mid-run, restart, and compare with an uninterrupted run.

A synthesis job on a cluster dies without warning (OOM killer, pre-empted node, wall-time limit),
so the test kills the whole process group of ``data_tools/synthesize_mar.py`` with SIGKILL, which
no handler can catch, once some but not all h5 files exist. Re-running the same command must then
produce exactly the files an uninterrupted run produces and leave no temporary file behind.
See docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "data_tools" / "synthesize_mar.py"
TAG = "640geo_64px60v"
MASK_INDICES = "0"
FILES_PER_IMAGE = 2  # gt.h5 + one pair file per mask
# Each attempt doubles the image count, so a machine fast enough to finish before the first
# poll sees a file still gets a run that is killed part-way.
DEMO_COUNTS = (3, 6, 12)
RUN_TIMEOUT_S = 240.0


def subprocess_env() -> dict[str, str]:
    """Environment of the child runs: the repository importable, one OpenMP thread (shared CI cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def kill_group_when(
    command: Sequence[str],
    ready: Callable[[], bool],
    log_path: Path,
    timeout: float = RUN_TIMEOUT_S,
    poll_s: float = 0.01,
    cwd: Path | None = None,
) -> int:
    """Run ``command`` in a new process group and SIGKILL the whole group once ``ready()`` is true.

    The child gets its own session so that ``os.killpg`` reaches its worker processes too but not
    pytest.

    Args:
        command: the command line.
        ready: polled every ``poll_s`` seconds; the group is killed at the first True.
        log_path: stdout and stderr of the child go here (a pipe could fill up and stall it).
        timeout: seconds before giving up; the group is killed and TimeoutError raised.
        poll_s: polling interval.
        cwd: working folder of the child.

    Returns:
        The child's return code: ``-signal.SIGKILL`` when it was killed, otherwise the code it
        exited with before ``ready()`` became true (the caller decides whether that is a failure).
    """
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd, env=subprocess_env()
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if ready():
                    # An unreaped child keeps its process group, so this cannot miss the group
                    # even if the child exited a moment ago; its return code then tells.
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{command[1]} did not reach the kill point in {timeout} s; log: {log_path}")
                time.sleep(poll_s)
            return proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def synthesis_command(out: Path, demo_count: int, workers: int) -> list[str]:
    return [
        sys.executable, str(SCRIPT), "--out", str(out), "--split", "train", "--demo-count", str(demo_count),
        "--mask-indices", MASK_INDICES, "--image-size", "64", "--views", "60", "--device", "cpu",
        "--workers", str(workers), "--seed", "7", "--no-progress",
    ]


def temporaries(root: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.<pid>.<uuid>.tmp``) anywhere under ``root``."""
    return sorted(p for p in root.rglob("*.tmp") if p.is_file())


def h5_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.h5"))


def _attrs(obj: h5py.HLObject) -> list[tuple[str, object]]:
    return sorted((k, np.asarray(v).tolist()) for k, v in obj.attrs.items())


def h5_contents(root: Path) -> dict[str, tuple]:
    """Every dataset of every h5 file under ``root``: (dtype, shape, attrs, raw bytes), keyed by path.

    File-level attributes are keyed ``<path>:/``.
    """
    found: dict[str, tuple] = {}
    for path in h5_files(root):
        with h5py.File(path, "r") as f:
            found[f"{path.relative_to(root)}:/"] = ("file", (), _attrs(f), sorted(f.keys()))
            for key, dataset in f.items():
                array = dataset[()]
                found[f"{path.relative_to(root)}:{key}"] = (
                    array.dtype.str, array.shape, _attrs(dataset), array.tobytes()
                )
    return found


def assert_same_data(resumed: Path, reference: Path) -> None:
    """Same h5 files with byte-identical datasets (dtype, shape, attributes), list file and masks."""
    got, expected = h5_contents(resumed), h5_contents(reference)
    assert got.keys() == expected.keys()
    different = [key for key in expected if got[key] != expected[key]]
    assert not different, f"datasets differ after the restart: {different[:5]}"
    for name in (f"train_{TAG}_dir.txt", "trainmask.npy"):
        assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    with h5py.File(h5_files(resumed)[0], "r") as f:  # the byte comparison above compares real arrays
        assert any(np.asarray(d[()]).size > 0 for d in f.values())


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_mid_run_then_restart_gives_the_uninterrupted_data(tmp_path: Path, workers: int) -> None:
    killed_at: dict[str, int] = {}
    for demo_count in DEMO_COUNTS:
        out = tmp_path / f"resumed_{demo_count}"
        total = demo_count * FILES_PER_IMAGE

        def ready(out=out, total=total) -> bool:
            done = len(h5_files(out))
            # Prefer the moment a file is being written, so the kill also leaves a half-written
            # temporary; do not wait past half of the files for it.
            return done >= 1 and (bool(temporaries(out)) or done >= total // 2)

        log = tmp_path / f"killed_{demo_count}.log"
        code = kill_group_when(synthesis_command(out, demo_count, workers), ready, log)
        if code == -signal.SIGKILL:
            killed_at = {"demo_count": demo_count, "h5": len(h5_files(out)), "tmp": len(temporaries(out))}
            break
        assert code == 0, log.read_text()[-2000:]
    else:
        pytest.fail(f"every run finished before it could be killed (image counts {DEMO_COUNTS})")

    demo_count, total = killed_at["demo_count"], killed_at["demo_count"] * FILES_PER_IMAGE
    assert 1 <= killed_at["h5"] < total, f"the kill did not happen mid-run: {killed_at}"
    report_path = out / "synthesis_report_train.json"
    assert not report_path.exists()  # SIGKILL: no finally block ran, so nothing wrote a report

    restarted = subprocess.run(
        synthesis_command(out, demo_count, workers), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env=subprocess_env(),
    )
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["files_kept"] == killed_at["h5"] and report["files_written"] == total - killed_at["h5"], report
    assert report["images_complete"] == demo_count and not report["failures"]
    assert not temporaries(out), f"temporary files left after the restart (killed with {killed_at['tmp']} present)"

    reference = tmp_path / "reference"
    uninterrupted = subprocess.run(
        synthesis_command(reference, demo_count, workers), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env=subprocess_env(),
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    assert len(h5_files(reference)) == total
    assert_same_data(out, reference)


def test_shards_sharing_the_output_folder_give_the_unsharded_data(tmp_path: Path) -> None:
    """--shard i/n into one --out: together the same files and list as one unsharded run; one report per shard."""
    from eqmar.data.masks import generate_masks
    from eqmar.data.synthesis import SynthesisConfig, demo_sources, synthesize_dataset

    sources, masks = demo_sources(3, seed=7, split="train"), generate_masks(1, size=128, seed=0)
    config = SynthesisConfig(image_size=64, num_views=60, device="cpu", seed=7)
    reports = [
        synthesize_dataset(sources, masks, tmp_path / "sharded", "train", config, shard=(i, 2), progress=False)
        for i in range(2)
    ]
    synthesize_dataset(sources, masks, tmp_path / "whole", "train", config, progress=False)
    assert sorted(r.images_total for r in reports) == [1, 2]
    assert_same_data(tmp_path / "sharded", tmp_path / "whole")
    saved = sorted(p.name for p in (tmp_path / "sharded").glob("synthesis_report_*.json"))
    assert saved == ["synthesis_report_train_shard0of2.json", "synthesis_report_train_shard1of2.json"]
