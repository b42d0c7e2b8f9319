"""Integration test of the MONAI Label app (monailabel_app/) against a real server.

The app runs in its own environment (``bash monailabel_app/setup_env.sh`` makes
``monailabel_app/.venv``: MONAI Label 0.8.5 needs numpy < 2, eqmar's simulation stack numpy >= 2.3).
This test, run by the main environment, simulates two CT volumes with metal artifacts, starts
``monailabel start_server`` with the app environment's Python on a free loopback port, and talks
to it over HTTP: ``/info/``, ``POST /infer/mar`` (shape, dtype, streak reduction), bad requests
(4xx, server still serving), then stops it and checks that no process of it is left. A second
test runs the app's EQ-Reg training task through MONAI Label's task runner.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

APP = ROOT / "monailabel_app"
APP_PYTHON = APP / ".venv" / "bin" / "python"
MODEL = ROOT / "bundles" / "eqmar_mar" / "models" / "model.pt"
SIZE = 416
TAG = "640geo_416px640v"  # the shipped reference model's geometry (the published 640geo)
SCALE = SIZE / 128  # the test implants are placed on a 128 px grid
METAL_HU = 2500.0
STARTUP_SECONDS = 240


# ----------------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 300,
    method: str | None = None,
) -> tuple[int, bytes]:
    """(status, body) of a GET (``data`` None) or POST (or ``method``); HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=data, headers=headers or {},
                                     method=method or ("GET" if data is None else "POST"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _multipart(
    fields: dict[str, str], files: dict[str, tuple[str, bytes]] | None = None
) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in (files or {}).items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _infer(
    base: str, query: str, params: dict[str, Any] | None = None, upload: tuple[str, bytes] | None = None
) -> tuple[int, bytes]:
    body, headers = _multipart({"params": json.dumps(params or {})}, {"file": upload} if upload else None)
    return _request(f"{base}/infer/mar?{query}", body, headers)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _disc(row: int, col: int, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


def streak_rmse(image: np.ndarray, clean: np.ndarray, metal: np.ndarray) -> float:
    """RMSE in HU against the clean slice outside the metal: the streak error."""
    return float(np.sqrt(np.mean((np.asarray(image, np.float64) - clean)[~metal] ** 2)))


class _Server:
    """A ``monailabel start_server`` subprocess in its own process group."""

    def __init__(self, python: Path, app: Path, studies: Path, model: Path, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        env = {**os.environ, "MONAI_LABEL_TRACKING_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
        env.pop("PYTHONPATH", None)  # the app environment must not see the main environment's packages
        command = [
            str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
            "--host", "127.0.0.1", "--port", str(self.port), "--conf", "model_path", str(model),
        ]
        with open(self.log, "wb") as log:
            # a new session: the whole group (server and anything it spawns) can be stopped together
            self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pgid = self.process.pid

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = STARTUP_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MONAI Label server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                status, _ = _request(f"{self.url}/info/", timeout=5)
                if status == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(1.0)
        raise TimeoutError(f"MONAI Label server not ready after {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> int | None:
        """SIGINT (uvicorn's graceful shutdown), then SIGTERM, then SIGKILL, to the whole group."""
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if not _group_alive(self.pgid):
                break
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(self.pgid):
                self.process.poll()  # reap the leader so that the group can vanish
                time.sleep(0.2)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return None


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def app_python() -> Path:
    if not APP_PYTHON.exists():
        message = (f"MONAI Label app environment not found ({APP_PYTHON}); "
                   "create it with: bash monailabel_app/setup_env.sh")
        if os.environ.get("EQMAR_REQUIRE_MONAILABEL_APP"):  # set by .ci/monailabel_step
            pytest.fail(message)
        pytest.skip(message)
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing (see bundles/eqmar_mar/docs/README.md)")
    return APP_PYTHON


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Any]:
    """Two simulated CT volumes with a titanium insert on one slice each, their references as final labels."""
    import nibabel as nib

    from eqmar.apps.mar.inference import model_geometry
    from eqmar.apps.mar.writers import axial_to_nifti
    from eqmar.ct.physics import mu_to_hu
    from eqmar.ct.simulator import SynDeepLesionSimulator
    from eqmar.data.phantoms import phantom_slice

    folder = tmp_path_factory.mktemp("studies")
    (folder / "labels" / "final").mkdir(parents=True)
    volumes = {}
    cases = {
        "pelvis_a": ("pelvis", 0, _disc(64 * SCALE, 84 * SCALE, 6 * SCALE), 1, 3),
        "abdomen_b": ("abdomen", 3, _disc(70 * SCALE, 50 * SCALE, 5 * SCALE), 0, 2),
    }
    with SynDeepLesionSimulator(model_geometry({"geometry_tag": TAG}), device="cpu") as sim:
        for name, (kind, seed, disc, metal_slice, count) in cases.items():
            image = sim.prepare_image(phantom_slice(kind, seed=seed, size=SIZE))
            pair = sim.simulate_pair(image, sim.prepare_mask(disc.astype(np.uint8)), np.random.default_rng(seed))
            clean, artifact = mu_to_hu(image.mu), mu_to_hu(pair["ma_CT"])
            axial = np.stack([artifact if k == metal_slice else clean for k in range(count)])
            reference = np.stack([clean] * count)
            affine = np.array([[-0.75, 0, 0, 90.0], [0, -0.75, 0, 80.0], [0, 0, 2.0, -40.0], [0, 0, 0, 1]])
            nib.save(nib.Nifti1Image(axial_to_nifti(axial, affine).astype(np.float32), affine),
                     str(folder / f"{name}.nii.gz"))
            nib.save(nib.Nifti1Image(axial_to_nifti(reference, affine).astype(np.float32), affine),
                     str(folder / "labels" / "final" / f"{name}.nii.gz"))
            volumes[name] = {"axial": axial, "clean": clean, "metal_slice": metal_slice, "affine": affine}
    return {"folder": folder, "volumes": volumes}


def _app_copy(workdir: Path) -> Path:
    """The app's code in a scratch folder: MONAI Label writes logs/, model/ and bin/ into the app folder."""
    app = workdir / "app"
    app.mkdir()
    shutil.copy2(APP / "main.py", app / "main.py")
    shutil.copytree(APP / "lib", app / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    return app


@pytest.fixture(scope="module")
def server(app_python, studies, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("monailabel")
    model = workdir / "mar.pt"
    shutil.copy2(MODEL, model)
    started = time.monotonic()
    instance = _Server(app_python, _app_copy(workdir), studies["folder"], model, workdir)
    try:
        instance.wait_ready()
        print(f"MONAI Label server ready in {time.monotonic() - started:.1f} s on port {instance.port}")
        yield instance
    finally:
        instance.stop()  # also when startup or a test failed: no orphans
        assert not _group_alive(instance.pgid), f"processes of the server group {instance.pgid} survived"


# ------------------------------------------------------------------------------------- tests
def test_info_lists_the_mar_model(server, studies):
    status, body = _request(f"{server.url}/info/")
    assert status == 200
    info = json.loads(body)
    assert info["models"]["mar"]["type"] == "others" and info["models"]["mar"]["dimension"] == 3
    assert "mar" in info["trainers"]
    assert info["datastore"]["total"] == len(studies["volumes"])


def test_infer_reduces_streaks(server, studies, tmp_path):
    import nibabel as nib

    from eqmar.apps.mar.writers import nifti_to_axial

    for name, volume in studies["volumes"].items():
        started = time.monotonic()
        status, body = _infer(server.url, f"image={name}&output=image")
        seconds = time.monotonic() - started
        assert status == 200, body[:500]
        assert body[:2] == b"\x1f\x8b"  # a gzip (.nii.gz) file
        path = tmp_path / f"{name}_mar.nii.gz"
        path.write_bytes(body)
        result = nib.load(str(path))
        axial = volume["axial"]
        assert result.get_data_dtype() == np.float32
        assert result.shape == (SIZE, SIZE, axial.shape[0])
        np.testing.assert_allclose(result.affine, volume["affine"])
        corrected = nifti_to_axial(result.get_fdata(dtype=np.float32), result.affine)
        k = volume["metal_slice"]
        metal = axial[k] > METAL_HU
        np.testing.assert_array_equal(corrected[k][metal], axial[k][metal])  # the implant is kept
        for j in set(range(axial.shape[0])) - {k}:
            np.testing.assert_allclose(corrected[j], axial[j], atol=1e-3)  # slices without metal: unchanged
        before, after = streak_rmse(axial[k], volume["clean"], metal), streak_rmse(corrected[k], volume["clean"], metal)
        print(f"MONAI Label {name}: streak RMSE outside metal {before:.1f} -> {after:.1f} HU ({seconds:.1f} s)")
        assert after < 0.85 * before

    status, body = _infer(server.url, "image=pelvis_a&output=json")
    assert status == 200
    result = json.loads(body)
    assert result["metal_slices"] == 1 and result["slices"] == 3 and result["dtype"] == "float32"
    assert result["li_projector"] == "parallel"  # the app environment has no ASTRA


def test_bad_requests_get_4xx_and_the_server_keeps_serving(server):
    status, body = _infer(server.url, "image=no_such_image&output=image")
    assert status == 404 and b"no_such_image" in body
    status, body = _infer(server.url, "output=image",
                          upload=("broken.nii.gz", gzip.compress(b"not a NIfTI header")[:40]))
    assert status == 422 and b"the uploaded file (.nii.gz): cannot read it as a CT image" in body, body[:500]
    assert b"tmp" not in body  # never the server's temporary copy
    status, body = _infer(server.url, "output=image", upload=("noise.nii.gz", os.urandom(3000)))
    assert 400 <= status < 500, body[:500]
    status, body = _infer(server.url, "image=pelvis_a&output=image", params={"li_projector": "cone-beam"})
    assert status == 400 and b"li_projector" in body
    status, _ = _request(f"{server.url}/infer/segmentation?image=pelvis_a", *_multipart({"params": "{}"}))
    assert status == 404
    status, body = _request(f"{server.url}/info/")
    assert status == 200 and "mar" in json.loads(body)["models"]
    status, _ = _infer(server.url, "image=abdomen_b&output=json")
    assert status == 200


def _rgb_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_input_that_is_not_ct_in_hu_gets_422_naming_it(server):
    """The CLI's refusals, through the server: an RGB PNG (upload, or stored in the datastore) and an MR DICOM."""
    from pydicom.data import get_testdata_file

    status, body = _infer(server.url, "output=image", upload=("photo.png", _rgb_png()))
    assert status == 422 and b"the uploaded file (.png)" in body and b"16-bit grayscale" in body, body[:500]
    mr = Path(get_testdata_file("MR_small.dcm", download=False)).read_bytes()
    status, body = _infer(server.url, "output=image", upload=("MR_small.dcm", mr))
    assert status == 422 and b"Modality is 'MR'" in body and b"tmp" not in body, body[:500]
    # stored in the datastore (MONAI Label accepts any file there), then refused by id
    status, body = _request(f"{server.url}/datastore/image?image=colour_photo",
                            *_multipart({"params": "{}"}, {"file": ("colour_photo.png", _rgb_png())}), method="PUT")
    assert status == 200, body[:500]
    status, body = _infer(server.url, "image=colour_photo&output=image")
    assert status == 422 and b"image 'colour_photo'" in body, body[:500]


def test_params_that_are_not_json_get_400(server):
    body, headers = _multipart({"params": "{not json"})
    status, answer = _request(f"{server.url}/infer/mar?image=pelvis_a&output=json", body, headers)
    assert status == 400 and b"params is not valid JSON" in answer, answer[:500]
    status, _ = _infer(server.url, "image=abdomen_b&output=json")  # and the server keeps serving
    assert status == 200


def test_server_stops_cleanly(server):
    returncode = server.stop()
    assert returncode is not None, server.tail()
    assert not _group_alive(server.pgid)
    with pytest.raises(OSError):
        _request(f"{server.url}/info/", timeout=5)


def test_train_task_runs_eqreg(app_python, studies, tmp_path):
    """Two epochs of the app's training task (MONAI Label's task runner, no server)."""
    from eqmar.apps.mar.model_file import load_mar_model

    model = tmp_path / "mar.pt"
    shutil.copy2(MODEL, model)
    env = {
        **os.environ,
        "MONAI_LABEL_TRACKING_ENABLED": "false",
        "MONAI_LABEL_APP_CONF": json.dumps({"model_path": str(model)}),
    }
    env.pop("PYTHONPATH", None)
    request = {"model": "mar", "max_epochs": 2, "train_batch_size": 1, "patch_size": 32, "multi_gpu": False}
    run = subprocess.run(
        [str(app_python), "-m", "monailabel.interfaces.utils.app", "-a", str(_app_copy(tmp_path)), "-s",
         str(studies["folder"]), "-m", "train", "-r", json.dumps(request)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, start_new_session=True,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    iterations = 2 * len(studies["volumes"])  # one slice per volume pair and epoch, batch size 1
    terms = [float(v) for v in re.findall(r"eq_reg: ([0-9.eE+-]+)", output)]
    assert len(terms) == iterations and max(terms) > 0, output[-4000:]  # identity draws give 0
    _, payload = load_mar_model(model)
    assert payload["meta"]["iterations"] == iterations and payload["meta"]["group"] == "C4"
