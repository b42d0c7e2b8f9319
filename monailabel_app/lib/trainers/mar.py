"""MONAI Label training task: fine-tune the MAR network with the EQ-Reg regulariser.

Datastore pairs: image = metal-affected CT volume, final label = the artifact-free reference
volume on the same grid (both HU). Each sample is one random axial slice with metal
(:class:`lib.transforms.RandMARSliced`), cropped to ``patch_size``; the network starts from the
current model file and is trained with eqmar's :class:`~eqmar.losses.MARLoss` on the paired batch
``[x ; g.x]`` with the EQ-Reg term (:class:`eqmar.equivariance.EQReg`, one of the
``train_handlers``; its ``prepare_batch`` is installed on the trainer). When training completes
the model file is rewritten (eqmar's self-describing format), and the inference task picks it up.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.handlers import LrScheduleHandler, PeakSignalToNoiseRatio, StatsHandler, ValidationHandler
from monai.inferers import SimpleInferer
from monai.transforms import RandSpatialCropd, SelectItemsd
from monailabel.tasks.train.basic_train import BasicTrainTask, Context

from eqmar.apps.mar.bundle import masked_pred_label
from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU
from eqmar.apps.mar.model_file import MARModelSaver
from eqmar.apps.mar.transforms import MARInputsd
from eqmar.equivariance import EQReg
from eqmar.losses import MARLoss
from eqmar.networks import proximal_conv_names, proximal_net_names
from lib.infers.mar import ct_load_transforms
from lib.transforms import RandMARSliced

#: EQ-Reg weight of the shipped UNet (its features are on the µ scale; see eqmar's MAR demo configuration).
DEFAULT_EQREG_WEIGHT = 1e-4

__all__ = ["MARTrain"]

logger = logging.getLogger(__name__)


class MARTrain(BasicTrainTask):
    """Train task for the MAR model with EQ-Reg.

    Args:
        model_dir: where MONAI Label keeps checkpoints and statistics of this task.
        model_path: the eqmar model file to start from and to overwrite when training completes.
        description: shown by ``/info/``.
        kwargs: passed to :class:`~monailabel.tasks.train.basic_train.BasicTrainTask`.

    Request options (defaults in ``/info/``): ``max_epochs``, ``train_batch_size``,
    ``patch_size``, ``learning_rate``, ``eqreg_weight``, ``eqreg_group``, ``metal_threshold_hu``,
    ``li_projector``.
    """

    def __init__(
        self,
        model_dir: str,
        model_path: str,
        description: str = "Fine-tune the MAR network on (metal-affected, reference) volume pairs with EQ-Reg",
        **kwargs: Any,
    ) -> None:
        self._model_path = model_path
        self._eqreg: EQReg | None = None
        self._spec: dict[str, Any] | None = None
        self._meta: dict[str, Any] = {}
        config = {
            "max_epochs": 10,
            "train_batch_size": 4,
            "val_split": 0.0,
            "patch_size": 64,
            "learning_rate": 2e-4,
            "eqreg_weight": DEFAULT_EQREG_WEIGHT,
            "eqreg_group": "C4",
            "metal_threshold_hu": DEFAULT_METAL_THRESHOLD_HU,
            "li_projector": "auto",
            "dataset": ["Dataset", "CacheDataset"],
            "dataloader": ["DataLoader", "ThreadDataLoader"],
        }
        kwargs.setdefault("amp", torch.cuda.is_available())  # AMP is a CUDA feature
        kwargs.setdefault("publish_path", None)  # MARModelSaver writes the eqmar model file instead
        super().__init__(model_dir, description, config=config, **kwargs)

    # ------------------------------------------------------------------------------ model
    def network(self, context: Context) -> torch.nn.Module:
        from eqmar.apps.mar.model_file import load_mar_model

        network, payload = load_mar_model(self._model_path)  # strict: the file's own architecture
        self._spec, self._meta = payload["network"], dict(payload.get("meta") or {})
        return network.train()

    def optimizer(self, context: Context) -> torch.optim.Optimizer:
        lr = float(context.request.get("learning_rate", 2e-4))
        return torch.optim.Adam(context.network.parameters(), lr=lr, betas=(0.5, 0.999))

    def loss_function(self, context: Context) -> MARLoss:
        return MARLoss()

    # ------------------------------------------------------------------------------ data
    def train_pre_transforms(self, context: Context) -> list[Any]:
        patch = int(context.request.get("patch_size", 64))
        return [
            *ct_load_transforms(("image", "label")),
            RandMARSliced(
                keys=("image", "label"),
                model_path=self._model_path,
                metal_threshold_hu=float(context.request.get("metal_threshold_hu", DEFAULT_METAL_THRESHOLD_HU)),
                li_projector=str(context.request.get("li_projector", "auto")),
            ),
            MARInputsd(),
            SelectItemsd(keys=["image", "label"]),
            RandSpatialCropd(keys=["image", "label"], roi_size=(patch, patch), random_size=False),
        ]

    def train_post_transforms(self, context: Context) -> None:
        return None  # MONAI Label expects None, not []

    def val_pre_transforms(self, context: Context) -> list[Any]:
        return self.train_pre_transforms(context)[:-1]  # whole working-size slices

    def val_inferer(self, context: Context) -> SimpleInferer:
        return SimpleInferer()

    def train_inferer(self, context: Context) -> SimpleInferer:
        return SimpleInferer()

    def train_key_metric(self, context: Context) -> dict[str, Any]:
        return {"train_psnr": PeakSignalToNoiseRatio(max_val=1.0, output_transform=masked_pred_label)}

    def val_key_metric(self, context: Context) -> dict[str, Any]:
        return {"val_psnr": PeakSignalToNoiseRatio(max_val=1.0, output_transform=masked_pred_label)}

    # ------------------------------------------------------------------------------ handlers
    def train_handlers(self, context: Context) -> list[Any]:
        """EQ-Reg, LR schedule, statistics, validation and the model-file writer.

        Built here instead of by the parent, whose TensorBoard and MLflow handlers need packages
        that this environment does not carry.
        """
        from eqmar.engines import loss_terms

        group = str(context.request.get("eqreg_group", "C4"))
        self._eqreg = EQReg(
            context.network,
            # unrolled networks: their proximal nets, as published; others (the shipped UNet): every
            # conv whose width fits the group (EQReg's default)
            layers=proximal_conv_names(context.network, which=("x_net", "m_net"))
            if proximal_net_names(context.network) else None,
            group=group,
            weight=float(context.request.get("eqreg_weight", DEFAULT_EQREG_WEIGHT)),
            image_keys=("image", "label"),
        )
        handlers: list[Any] = [self._eqreg]
        scheduler = self.lr_scheduler_handler(context)
        if scheduler is not None:
            handlers.append(scheduler)
        if context.local_rank == 0:
            handlers.append(StatsHandler(tag_name="train", output_transform=loss_terms))
            handlers.append(
                MARModelSaver(
                    self._model_path, context.network, self._spec or {}, self._meta.get("geometry_tag", "640geo"),
                    image_size=self._meta.get("image_size"),
                    meta={**{k: v for k, v in self._meta.items()
                             if k not in ("geometry_tag", "image_size", "iterations")},
                          "group": group, "weight": float(context.request.get("eqreg_weight", DEFAULT_EQREG_WEIGHT))},
                )
            )
        if context.evaluator:
            handlers.append(ValidationHandler(self._val_interval, validator=context.evaluator, epoch_level=True))
        return handlers

    def lr_scheduler_handler(self, context: Context) -> LrScheduleHandler:
        scheduler = torch.optim.lr_scheduler.StepLR(context.optimizer, step_size=max(int(context.max_epochs) // 2, 1),
                                                    gamma=0.5)
        return LrScheduleHandler(lr_scheduler=scheduler, print_lr=False)

    def val_handlers(self, context: Context) -> list[Any] | None:
        return [StatsHandler(output_transform=lambda x: None, iteration_log=False)] if context.local_rank == 0 else None

    def finalize(self, context: Context) -> None:
        """Install EQ-Reg's paired ``prepare_batch`` on the trainer, then the parent's publisher."""
        if self._eqreg is None:
            raise RuntimeError("MARTrain: the EQ-Reg handler was not created (train_handlers not called?)")
        context.trainer.prepare_batch = self._eqreg.prepare_batch
        super().finalize(context)

    def load_path(self, output_dir: str, pretrained: bool = True) -> None:
        """No checkpoint to load: :meth:`network` already starts from the current model file."""
        return None
