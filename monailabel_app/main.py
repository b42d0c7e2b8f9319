"""MONAI Label app for CT metal artifact reduction with an eqmar model (the reference LI-residual UNet + EQ-Reg).

Start (from the repository root, after ``bash monailabel_app/setup_env.sh``)::

    MONAI_LABEL_TRACKING_ENABLED=false monailabel_app/.venv/bin/python -m monailabel.main start_server \\
        --app monailabel_app --studies /path/to/studies --host 127.0.0.1 --port 8000

Models: ``mar`` (infer, ``InferType.OTHERS``: corrected volume in HU as float32 NIfTI) and ``mar``
(train, EQ-Reg). The model file is ``--conf model_path FILE``; by default ``model/mar.pt`` in the
app folder, which is created from the bundle's reference weights
(``bundles/eqmar_mar/models/model.pt``) when missing. Errors caused by the request (unknown image
id or model, unreadable upload, input that is not CT in HU, bad parameters, ``params`` that is not
JSON) are answered with 4xx, not 500, and their messages name the image id or the upload, never the
server's temporary copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lib.infers.mar import INPUT_NAME_KEY, MARInfer, MARInputError
from lib.trainers.mar import MARTrain
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

#: The bundle's reference weights, copied to ``model/mar.pt`` when the app has no model yet.
BUNDLE_MODEL = Path(__file__).resolve().parent.parent / "bundles" / "eqmar_mar" / "models" / "model.pt"


class MARApp(MONAILabelApp):
    """MONAI Label app serving the MAR model.

    Conf (``--conf KEY VALUE``): ``model_path`` (model file), ``metal_threshold_hu``,
    ``trace_model`` (``line`` or ``interpolating``), ``li_projector`` (``auto``, ``fanbeam``,
    ``parallel``); requests may override the last three in ``params``.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.model_path = conf.get("model_path") or os.path.join(self.model_dir, "mar.pt")
        if not os.path.exists(self.model_path) and not conf.get("model_path") and BUNDLE_MODEL.is_file():
            os.makedirs(self.model_dir, exist_ok=True)
            shutil.copyfile(BUNDLE_MODEL, self.model_path)  # a copy, so that training never edits the bundle
            logger.info("MAR model initialised from %s", BUNDLE_MODEL)
        if not os.path.exists(self.model_path):
            logger.warning("MAR model file %s not found: the mar model is not offered until it exists", self.model_path)
        _answer_bad_json_with_400()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="eqmar MAR",
            description="CT metal artifact reduction: an LI-residual UNet trained with the EQ-Reg "
                        "rotation-equivariance regulariser",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {
            "mar": MARInfer(
                path=self.model_path,
                metal_threshold_hu=float(self.conf.get("metal_threshold_hu", 2500.0)),
                trace_model=self.conf.get("trace_model", "line"),
                li_projector=self.conf.get("li_projector", "auto"),
            )
        }

    def init_trainers(self) -> dict[str, TrainTask]:
        if not os.path.exists(self.model_path):
            return {}
        return {"mar": MARTrain(model_dir=os.path.join(self.model_dir, "mar_train"), model_path=self.model_path)}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """Run inference; problems with the request become HTTP 4xx errors instead of 500."""
        from fastapi import HTTPException

        model, image = request.get("model"), request.get("image")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore if datastore else self.datastore()
            if not image or not store.get_image_uri(image):
                raise HTTPException(status_code=404, detail=f"unknown image id {image!r}")
        request = dict(request)
        request.setdefault(INPUT_NAME_KEY, _input_name(image))
        try:
            return super().infer(request, datastore)
        except MARInputError as error:
            raise HTTPException(status_code=error.status_code, detail=str(error)) from error
        except MONAILabelException as error:
            if error.error == MONAILabelError.INVALID_INPUT:
                raise HTTPException(status_code=400, detail=error.msg) from error
            raise


def _input_name(image: Any) -> str:
    """How messages name the request's image: its datastore id, or the upload (never the temporary copy's name)."""
    text = str(image or "")
    if os.path.isfile(text) and os.path.dirname(os.path.abspath(text)) == os.path.abspath(tempfile.gettempdir()):
        # MONAI Label saves an upload as a temporary file with the upload's suffix; its name means nothing to the user
        suffix = "".join(Path(text).suffixes)
        return f"the uploaded file{f' ({suffix})' if suffix else ''}"
    return f"image {text!r}" if text and not os.path.exists(text) else os.path.basename(text) or "the request's image"


def _answer_bad_json_with_400() -> None:
    """Answer ``params`` that is not JSON with 400 instead of MONAI Label's 500.

    MONAI Label's infer endpoint parses ``params`` with ``json.loads`` before the app sees the
    request, so the app cannot catch the error itself; it registers a FastAPI exception handler for
    ``json.JSONDecodeError`` on the server's application instead. The app is built while the server
    starts, after Starlette has assembled its middleware stack, so the stack is reset to be rebuilt,
    with the handler, on the next request. Outside the server (scripts, tests) nothing is done.
    """
    server = sys.modules.get("monailabel.app")
    fastapi_app = getattr(server, "app", None)
    if fastapi_app is None or json.JSONDecodeError in getattr(fastapi_app, "exception_handlers", {}):
        return
    from fastapi.responses import JSONResponse

    async def bad_json(request: Any, error: json.JSONDecodeError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": f"params is not valid JSON: {error}"})

    fastapi_app.add_exception_handler(json.JSONDecodeError, bad_json)
    fastapi_app.middleware_stack = None
