"""Reliability of training: the MAR recipe killed with SIGKILL mid-epoch and resumed with ``--resume``.

The recipe runs as a subprocess on a tiny SynDeepLesion root, checkpointing every two iterations;
it is SIGKILLed (no handler runs, no final checkpoint) once an interval checkpoint with iteration
>= 2 is on disk, part-way through the first epoch. The resumed run must start at the checkpoint's
iteration + 1, restore optimizer and LR-scheduler state, and stop after exactly
epochs x iters-per-epoch iterations. See docs/reliability.md.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from tests.reliability.test_reliability_synthesis import RUN_TIMEOUT_S, kill_group_when, subprocess_env

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RECIPE = ROOT / "recipes" / "mar_deeplesion.py"
TAG = "640geo_64px60v"
EPOCHS, ITERS_PER_EPOCH, INTERVAL = 2, 6, 2
_ITERATION = re.compile(r"iteration=(\d+)\.pt$")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training images x two masks and one test image x the ten test masks, 64 px."""
    from eqmar.data.masks import generate_masks
    from eqmar.data.synthesis import SynthesisConfig, demo_sources, synthesize_dataset

    root = tmp_path_factory.mktemp("syndeeplesion")
    # Ten masks, not the 100-mask set: the test split needs ten, and drawing 100 costs a second.
    masks = generate_masks(10, size=512, seed=4)
    config = SynthesisConfig(image_size=64, num_views=60, device="cpu")
    for split, count, indices in (("train", 2, [0, 1]), ("test", 1, None)):
        report = synthesize_dataset(
            demo_sources(count, split=split), masks, root, split, config, mask_indices=indices, progress=False
        )
        assert not report.failures, report.failures
    return root


def recipe_command(data: Path, out: Path, resume: bool = False) -> list[str]:
    command = [
        sys.executable, str(RECIPE), "--data", str(data), "--geometry-tag", TAG, "--out", str(out), "--arm", "eqreg",
        "--epochs", str(EPOCHS), "--iters-per-epoch", str(ITERS_PER_EPOCH), "--checkpoint-interval", str(INTERVAL),
        "--batch-size", "2", "--patch-size", "32", "--stages", "2", "--features", "8", "--train-masks", "0-1",
        "--val-masks", "none", "--test-images", "1", "--device", "cpu", "--workers", "0", "--seed", "0",
        "--no-progress",
    ]
    return command + ["--resume"] if resume else command


def interval_checkpoints(folder: Path) -> dict[int, Path]:
    """Complete interval checkpoints by iteration.

    MONAI's CheckpointSaver writes in place (not atomically), so a file can exist before it is
    complete; torch.save writes a zip archive whose central directory comes last, so
    ``zipfile.is_zipfile`` is true only for a complete file.
    """
    found = {}
    for path in folder.glob("checkpoint*iteration=*.pt") if folder.is_dir() else ():
        match = _ITERATION.search(path.name)
        if match and zipfile.is_zipfile(path):
            found[int(match.group(1))] = path
    return found


def logged_steps(tensorboard_files: list[Path]) -> list[int]:
    """Iterations at which the trainer logged its loss to TensorBoard."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in tensorboard_files:
        for event in EventFileLoader(str(path)).Load():
            steps += [int(event.step) for value in event.summary.value if value.tag == "loss"]
    return steps


@pytest.mark.slow  # two recipe processes, ~35 s of CPU
def test_sigkill_mid_epoch_then_resume_continues_at_the_checkpoint(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "run"
    checkpoints, tensorboard = out / "eqreg" / "checkpoints", out / "eqreg" / "tensorboard"
    total = EPOCHS * ITERS_PER_EPOCH

    code = kill_group_when(
        recipe_command(data_root, out), lambda: max(interval_checkpoints(checkpoints), default=0) >= INTERVAL,
        tmp_path / "killed.log", cwd=tmp_path,
    )
    log = (tmp_path / "killed.log").read_text()
    assert code == -signal.SIGKILL, f"the run ended (code {code}) before it was killed:\n{log[-2000:]}"
    assert not (checkpoints / "checkpoint_final.pt").exists()  # SIGKILL: no final or exception checkpoint
    saved = interval_checkpoints(checkpoints)
    start = max(saved)
    assert INTERVAL <= start < total and start % ITERS_PER_EPOCH != 0, f"not killed mid-epoch: {sorted(saved)}"
    state = torch.load(saved[start], map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == start and state["trainer"]["epoch_length"] == ITERS_PER_EPOCH
    # A file killed mid-write (MONAI saves in place) may remain: latest_checkpoint skips it
    # (test_resume_skips_a_truncated_newest_checkpoint).
    before = set(tensorboard.glob("events.*"))

    resumed = subprocess.run(
        recipe_command(data_root, out, resume=True), capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        cwd=tmp_path, env=subprocess_env(),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The resumed process logged exactly the iterations after the checkpoint, each once.
    assert logged_steps(sorted(set(tensorboard.glob("events.*")) - before)) == list(range(start + 1, total + 1))
    final = torch.load(checkpoints / "checkpoint_final.pt", map_location="cpu", weights_only=False)
    assert final["trainer"]["iteration"] == total and final["trainer"]["max_epochs"] == EPOCHS
    # Optimizer and scheduler continued too: Adam counted every step, the LR scheduler every epoch.
    assert {int(s["step"]) for s in final["optimizer"]["state"].values()} == {total}
    assert final["lr_scheduler"]["last_epoch"] == EPOCHS
    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["eqreg"]["iterations"] == total
    assert (out / "eqreg" / "model.pt").is_file()


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path: Path) -> None:
    """A SIGKILL during a checkpoint write leaves a truncated newest file; resume should use the previous one."""
    from ignite.engine import Events
    from monai.data import DataLoader
    from torch import nn

    from eqmar.engines import build_trainer

    def trainer(max_epochs: int, resume: bool):
        torch.manual_seed(0)
        net = nn.Conv2d(1, 1, 3, padding=1)
        data = [{"image": torch.rand(1, 8, 8), "label": torch.rand(1, 8, 8)} for _ in range(8)]
        return build_trainer(
            net, DataLoader(data, batch_size=2), torch.optim.Adam(net.parameters(), 1e-3), nn.MSELoss(),
            max_epochs=max_epochs, arm="plain", output_dir=tmp_path, checkpoint_interval=2, resume=resume,
            progress=False, tensorboard=False,
        )

    trainer(max_epochs=1, resume=False).run()  # checkpoints at iterations 2 and 4, then final
    (tmp_path / "checkpoints" / "checkpoint_final.pt").unlink()
    newest = interval_checkpoints(tmp_path / "checkpoints")[4]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    steps: list[int] = []
    resumed = trainer(max_epochs=2, resume=True)
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: steps.append(engine.state.iteration))
    resumed.run()
    assert steps == list(range(3, 9))
