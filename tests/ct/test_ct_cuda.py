"""The ASTRA CUDA path against the CPU path and against analytic values (skipped without a GPU).

The CPU path models ASTRA's CUDA projectors (an interpolating forward projection for masks, a
pixel-driven back-projection), so on the same inputs both paths must agree closely; the remaining
difference is the one documented in :mod:`eqmar.ct.projector`: ``Projector.forward`` on the CPU is
ASTRA's line projector, which weights pixels by intersection length, while CUDA interpolates.

Run on a GPU machine with ``bash bench/gpu_checks.sh`` (docs/benchmarks.md, "GPU checks").
Where the CPU path has measured accuracy figures (``test_ct_projector.py``,
``test_conformance_syndeeplesion.py``) the tolerances reuse them. The CPU-against-CUDA bounds on
the forward projection (0.5 %) and on FBP (0.1 %) are set from the ray models instead, as
docs/benchmarks.md records no GPU measurement of them; the values a GPU gives belong there.
"""

from __future__ import annotations

import numpy as np
import pytest

from eqmar.ct.geometry import FanBeamGeometry
from eqmar.ct.projector import Projector
from eqmar.ct.simulator import SynDeepLesionSimulator
from eqmar.metrics import mar_psnr
from tests.helpers import astra_has_cuda

pytestmark = pytest.mark.skipif(not astra_has_cuda(), reason="ASTRA reports no CUDA device (astra.use_cuda() is False)")

GEOMETRY = FanBeamGeometry.preset("640geo").scaled(128, 160)


@pytest.fixture(scope="module")
def projectors():
    cpu, cuda = Projector(GEOMETRY, device="cpu"), Projector(GEOMETRY, device="cuda")
    yield {"cpu": cpu, "cuda": cuda}
    cpu.close()
    cuda.close()


@pytest.fixture(scope="module")
def grid():
    centres = (np.arange(GEOMETRY.image_size) - GEOMETRY.image_size / 2 + 0.5) * GEOMETRY.pixel_size_cm
    return np.meshgrid(centres, -centres)


@pytest.fixture(scope="module")
def smooth_phantom(grid):
    x, y = grid
    return (0.2 * np.exp(-((x - 1.0) ** 2 + (y + 0.5) ** 2) / (2 * 2.0**2))).astype(np.float32)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_cuda_is_selected_and_forward_matches_the_interpolating_cpu_projection(projectors, smooth_phantom):
    cpu, cuda = projectors["cpu"], projectors["cuda"]
    assert cuda.device == "cuda"
    on_gpu = cuda.forward(smooth_phantom)
    assert on_gpu.shape == GEOMETRY.sinogram_shape and on_gpu.dtype == np.float32
    # same ray model (interpolating), two implementations
    assert _relative(cpu.forward_interpolating(smooth_phantom), on_gpu) < 5e-3
    # CPU line projector vs CUDA: the documented ray-model difference, 1.25 % of the maximum on CPU
    assert np.abs(cpu.forward(smooth_phantom) - on_gpu).max() < 0.02 * on_gpu.max()


def test_metal_traces_agree(projectors):
    small = np.zeros(GEOMETRY.image_shape, np.float32)
    small[60:63, 70:72] = 1.0
    cpu_trace = projectors["cpu"].forward_interpolating(small) > 0
    cuda_trace = projectors["cuda"].forward(small) > 0
    # the conformance test's bar for the CPU model against the CUDA-made reference
    assert _iou(cpu_trace, cuda_trace) > 0.99


def test_fbp_agrees_and_reconstructs(projectors, smooth_phantom, grid):
    cpu, cuda = projectors["cpu"], projectors["cuda"]
    sinogram = cuda.forward(smooth_phantom)
    on_gpu = cuda.fbp(sinogram)
    # pixel-driven CPU back-projection computes what the CUDA back-projector computes
    assert _relative(cpu.fbp(sinogram), on_gpu) < 1e-3
    x, y = grid
    inside = x**2 + y**2 < 6.0**2
    assert _relative(on_gpu[inside], smooth_phantom[inside]) < 0.015
    twice = cuda.fbp_many([sinogram, 2 * sinogram])
    np.testing.assert_allclose(twice[1], 2 * twice[0], rtol=1e-5, atol=1e-6)


def test_cuda_adjointness(projectors):
    rng = np.random.default_rng(0)
    image = rng.random(GEOMETRY.image_shape).astype(np.float32)
    sinogram = rng.random(GEOMETRY.sinogram_shape).astype(np.float32)
    cuda = projectors["cuda"]
    lhs = float((cuda.forward(image).astype(np.float64) * sinogram).sum()) * GEOMETRY.angle_step * GEOMETRY.det_spacing
    rhs = float((image * cuda.backproject(sinogram).astype(np.float64)).sum()) * GEOMETRY.pixel_size_cm**2
    assert abs(lhs - rhs) / abs(lhs) < 0.02


def test_simulated_pairs_agree_between_devices(grid):
    """One pair per device from the same phantom: same trace, same image quality under the MAR metric."""
    x, y = grid
    hu = np.where(x**2 + (y / 0.8) ** 2 < 5.5**2, 40.0, -1000.0).astype(np.float32)
    hu[(x - 2.0) ** 2 + y**2 < 1.0] = 900.0  # bone
    metal = ((x + 1.5) ** 2 + (y + 1.0) ** 2 < 0.35**2).astype(np.uint8)
    pairs, truth = {}, None
    for device in ("cpu", "cuda"):
        with SynDeepLesionSimulator(GEOMETRY, device=device) as sim:
            img = sim.prepare_image(hu)
            truth = img.mu
            pairs[device] = sim.simulate_pair(img, sim.prepare_mask(metal), np.random.default_rng(7))
    cpu, cuda = pairs["cpu"], pairs["cuda"]
    assert _iou(cpu["metal_trace"].astype(bool), cuda["metal_trace"].astype(bool)) > 0.99
    for key in ("ma_CT", "LI_CT"):
        # the noise realisations differ (Poisson draws follow the slightly different means), so
        # compare quality, with the conformance test's bar (measured CPU-vs-reference gaps <= 0.05 dB)
        gap = mar_psnr(cuda[key], truth, cuda["mask"]) - mar_psnr(cpu[key], truth, cpu["mask"])
        assert abs(gap) < 0.3, f"{key}: CUDA - CPU PSNR {gap:+.2f} dB"
