"""Helpers the tests share: the checkout's paths, small data sets and files, and loading scripts as modules.

Fixtures live in ``conftest.py``; these are plain names, imported as ``from tests.helpers import ...``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
# EQMAR_CONFORMANCE_DIR points elsewhere, e.g. at a copy of the sample on a GPU machine (bench/gpu_checks.sh)
CONFORMANCE = Path(os.environ.get("EQMAR_CONFORMANCE_DIR") or SHARED / "conformance" / "syndeeplesion")


def load_script(path: str | os.PathLike) -> ModuleType:
    """Import a script of the checkout (a recipe, a bench tool) as a module, without touching ``sys.path``.

    The module is registered under a private name, so repeated loads return the same module.
    """
    path = Path(path)
    name = f"_eqmar_script_{path.parent.name}_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def recipe(name: str) -> ModuleType:
    """The recipe ``recipes/<name>.py`` as a module."""
    return load_script(ROOT / "recipes" / f"{name}.py")


def astra_has_cuda() -> bool:
    """True when ASTRA can run its CUDA projectors here (a GPU, a CUDA build and its libraries)."""
    from eqmar.ct.projector import astra_cuda_available

    try:
        return astra_cuda_available()
    except Exception:  # a missing CUDA library makes the import or the probe fail: no CUDA path here
        return False


TINY_TAG = "640geo_64px72v"


def make_tiny_syndeeplesion(root: Path, train_masks: int) -> Path:
    """A SynDeepLesion-layout root at 64 px / 72 views: 2 demo train images with the first
    ``train_masks`` train masks, 1 demo test image with all 10 test masks (tag :data:`TINY_TAG`).

    Mask set seed 4: every one of these masks keeps metal at 64 px (with seed 2, test mask 5 vanishes
    and synthesis refuses it).
    """
    from eqmar.data.masks import generate_mask_set
    from eqmar.data.synthesis import SynthesisConfig, demo_sources, select_split_masks, synthesize_dataset

    config = SynthesisConfig(image_size=64, num_views=72)
    masks = generate_mask_set(seed=4)
    synthesize_dataset(demo_sources(2, split="train"), select_split_masks(masks, "train"), root, "train", config,
                       mask_indices=range(train_masks), progress=False)
    synthesize_dataset(demo_sources(1, split="test"), select_split_masks(masks, "test"), root, "test", config,
                       progress=False)
    return root


def make_trainer_checkpoint(network: torch.nn.Module, out_dir: Path) -> Path:
    """Train an unrolled MAR ``network`` one EQ-Reg step with eqmar's trainer; return the checkpoint it wrote.

    The file is what a training run leaves in ``<arm>/checkpoints`` (network, optimizer, LR scheduler,
    trainer and pairing state), not a model file.
    """
    from eqmar.engines import EQRegSettings, build_trainer
    from eqmar.losses import MARLoss

    metal_free = torch.ones(2, 1, 16, 16)  # image: (ma_CT, LI_CT, 1 - mask); label: (gt, 1 - mask)
    batch = {
        "image": torch.cat([torch.rand(2, 2, 16, 16), metal_free], 1),
        "label": torch.cat([torch.rand(2, 1, 16, 16), metal_free], 1),
    }
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    trainer = build_trainer(
        network, [batch], optimizer, MARLoss(), max_epochs=1, arm="eqreg",
        settings=EQRegSettings(weight=1e-3, group="C4", layers=torch.nn.Conv2d), image_keys=("image", "label"),
        output_dir=out_dir, lr_scheduler=torch.optim.lr_scheduler.MultiStepLR(optimizer, [1]), progress=False,
        tensorboard=False,
    )
    trainer.run()
    return out_dir / "checkpoints" / "checkpoint_final.pt"
