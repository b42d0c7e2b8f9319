"""The glue of eqmar's MONAI bundle: its data list, its training metric's view of the output, its exit on bad input.

The bundle's inference and training pieces live with the MAR app: :class:`~eqmar.apps.mar.inferer.MARVolumeInferer`
(correction of HU volumes), :func:`~eqmar.apps.mar.model_file.load_mar_weights` and
:class:`~eqmar.apps.mar.model_file.MARModelSaver` (the model file).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ExitOnInputError", "bundle_datalist", "masked_pred_label"]


def masked_pred_label(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(predictions, targets)`` outside metal from a (decollated) MAR trainer output.

    For metrics during training: the prediction is the final image (``pred[0]`` of a decollated
    training-mode :class:`~eqmar.networks.blocks.MAROutput`, or ``pred`` itself) and the target
    the ground truth, both multiplied by the non-metal mask (label channel 1).
    """
    items = output if isinstance(output, (list, tuple)) else [output]
    preds, targets = [], []
    for item in items:
        pred = item["pred"]
        image = pred if isinstance(pred, torch.Tensor) else pred[0]
        label = item["label"]
        mask = label[1:2]
        preds.append(image * mask)
        targets.append(label[0:1] * mask)
    return preds, targets


class ExitOnInputError:
    """Ignite handler: let a run that a bad input ended with ``SystemExit`` exit at once.

    :class:`~eqmar.data.ct_input.LoadCTd` (``exit_on_error=True``) prints the one-line reason and
    raises ``SystemExit(2)``; attached before MONAI's ``StatsHandler`` this handler re-raises it, so
    that the stats handler does not log it again with a traceback.
    """

    def attach(self, engine: Any) -> None:
        """Register on ``Events.EXCEPTION_RAISED`` (call before the other handlers are attached)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Any, error: BaseException) -> None:
        if isinstance(error, SystemExit):
            raise error


def bundle_datalist(
    source: str | os.PathLike | Sequence[str | os.PathLike], key: str = "image", exit_on_error: bool = False
) -> list[dict[str, str]]:
    """Inference data list of a bundle run: ``[{key: path}, ...]``.

    Args:
        source: a NIfTI file, a DICOM file, a DICOM series folder, a folder of NIfTI files (each
            one volume), or a list of these.
        key: data key of the image.
        exit_on_error: print ``error: <message>`` on one line to stderr and exit with status 2
            instead of raising (for ``monai.bundle run``, which would bury the message in the
            tracebacks of its config evaluation).

    Raises:
        ValueError: no input given, or a folder holding neither DICOM nor NIfTI files.
        FileNotFoundError: a missing path.
    """
    try:
        return _datalist(source, key)
    except (ValueError, FileNotFoundError) as error:
        if not exit_on_error:
            raise
        from eqmar.data.ct_input import exit_on_input_error

        exit_on_input_error(error)


def _datalist(source: str | os.PathLike | Sequence[str | os.PathLike], key: str) -> list[dict[str, str]]:
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources or any(not str(s).strip() for s in sources):
        raise ValueError(
            "no input: pass --input with a NIfTI file, a DICOM file, a DICOM series folder or a folder of NIfTI files."
        )
    items: list[dict[str, str]] = []
    for entry in sources:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_dir():
            from eqmar.data.ct_input import NIFTI_SUFFIXES, holds_dicom

            if holds_dicom(path):
                items.append({key: str(path)})  # one series
                continue
            volumes = sorted(f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(NIFTI_SUFFIXES))
            if not volumes:
                raise ValueError(f"{path}: folder holds neither DICOM nor NIfTI (.nii, .nii.gz) files.")
            items.extend({key: str(f)} for f in volumes)
        else:
            items.append({key: str(path)})
    return items
