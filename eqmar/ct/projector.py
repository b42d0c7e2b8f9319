"""Fan-beam forward projection and filtered back-projection (ASTRA, with ODL's ramp filter).

The projector reproduces the SynDeepLesion reference pipeline (ODL ``RayTransform`` + ``fbp_op``
with a Ram-Lak filter, frequency scaling 1.0):

* ``forward`` gives line integrals in cm units (ASTRA ``fanflat`` on a unit-pixel grid, multiplied
  by the pixel size).
* ``fbp`` applies ODL's own ramp filter (``fbp_filter_op``) and then the back-projection scaled as
  ODL's adjoint. ODL's filter is used rather than a hand-written ``|k|`` ramp on purpose: ODL
  samples the ramp on a half-shifted reciprocal grid, which adds a small DC term (about +0.01/cm
  on a head-sized image) that the published reference images contain.

Devices: ``"cuda"`` delegates to ODL's ``astra_cuda`` ray transform, exactly the reference set-up.
``"cpu"`` forward-projects with ASTRA's CPU ``line_fanflat`` projector (reused ASTRA objects) and,
by default, back-projects with :class:`~eqmar.ct.backprojection.PixelDrivenBackprojector`, which
computes what ASTRA's CUDA back-projector computes (FBP of the reference sinograms reproduces the
reference images to ~1e-5 /cm) and, once its sparse matrix is cached (built on the first call:
about 2.5 s and 440 MB at 640geo), back-projects two 640geo sinograms in about 0.25 s.
``cpu_backprojector="astra"`` uses ASTRA's CPU ray-driven adjoint instead (the exact adjoint of
``forward``, about 0.8 s per sinogram and 1 dB PSNR noisier in FBP).

Known CPU-vs-CUDA difference: the CPU line projector weights a pixel by the ray's intersection
length, so a ray merely grazing metal gets a tiny weight or none, while the CUDA projector
interpolates between pixels; with :meth:`Projector.forward` a CPU metal trace is therefore slightly
narrower (IoU 0.915-0.990 with the CUDA reference on the SynDeepLesion test masks, always a subset
of it) and reconstructions of metal sinograms score 0.6-1.4 dB lower PSNR.
:meth:`Projector.forward_interpolating` follows the CUDA model on the CPU (trace IoU >= 0.999) at
about 5x the cost; the simulator uses it for metal masks, projected once each.

Arc (equi-angular) detectors, such as the ``"adn"`` preset, take the same route on the CPU with
arc-specific pieces (:mod:`eqmar.ct.arc`): ``forward`` runs ASTRA's CPU line projector on a
``fanflat_vec`` geometry that lists the arc rays one per row, ``forward_interpolating`` the same
Joseph projector with arc rays, and ``fbp`` the equi-angular Ram-Lak filter
(:class:`~eqmar.ct.arc.ArcRampFilter`, textbook kernel, no ODL) followed by the pixel-driven
back-projector with ``1/L^2`` weights (an ~84 MB cached matrix). At the adn preset on 2 shared
cores: set-up about 1.6 s (ASTRA parses the ray list as text), ``forward`` 0.2-0.5 s,
``forward_interpolating`` about 2 s, ``fbp`` 1.5 s on the first call and 0.15 s once cached. ODL's
``fbp_op`` and ASTRA's 2-D GPU projectors have no arc detector, so arc geometries run on the CPU
only (``device="auto"`` picks it; ``"cuda"`` is refused).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from eqmar.ct.arc import ArcRampFilter, arc_astra_vectors
from eqmar.ct.backprojection import PixelDrivenBackprojector
from eqmar.ct.geometry import FanBeamGeometry, rotation_quarters
from eqmar.ct.joseph import JosephForwardProjector
from eqmar.utils import require_extra

require_extra(__name__, "astra")

__all__ = ["Projector", "resolve_device", "astra_cuda_available", "odl_ray_transform"]

_DEVICES = ("auto", "cpu", "cuda")
_CPU_BACKPROJECTORS = ("pixel", "astra")


def _astra() -> Any:
    import astra  # heavy optional dependency: import only when a projector is built

    return astra


def astra_cuda_available() -> bool:
    """True when ASTRA reports a usable GPU (``astra.use_cuda()``): its CUDA build, driver and device."""
    return bool(_astra().use_cuda())


def resolve_device(device: str = "auto") -> str:
    """Map ``"auto" | "cpu" | "cuda"`` to the device the projector will use.

    Args:
        device: requested device; ``"auto"`` picks CUDA when ``astra.use_cuda()`` reports a GPU.

    Raises:
        ValueError: for an unknown device name.
        RuntimeError: when ``"cuda"`` is requested but ASTRA has no CUDA support here.
    """
    _check_device_name(device)
    if device == "cpu":
        return "cpu"
    cuda_available = astra_cuda_available()
    if device == "cuda" and not cuda_available:
        raise RuntimeError("Projector: device='cuda' requested but astra.use_cuda() is False (no GPU build/driver)")
    return "cuda" if cuda_available else "cpu"


def _check_device_name(device: str) -> None:
    if device not in _DEVICES:
        raise ValueError(f"Projector: device must be one of {_DEVICES}, got {device!r}")


def _resolve_arc_device(device: str) -> str:
    """Arc detectors run on the CPU: ``"auto"`` means CPU there, and ``"cuda"`` is refused."""
    _check_device_name(device)
    if device == "cuda":
        raise NotImplementedError(
            "Projector: arc (equi-angular) detectors run on the CPU only (ODL's fbp_op and ASTRA's 2-D GPU "
            "projectors support flat detectors only); use device='cpu' or 'auto'"
        )
    return "cpu"


def odl_ray_transform(geometry: FanBeamGeometry, impl: str = "astra_cpu") -> Any:
    """Build the ODL ``RayTransform`` equivalent to ``geometry`` (physical units, cm).

    Args:
        geometry: a flat-detector fan-beam geometry.
        impl: ODL back-end, ``"astra_cpu"`` or ``"astra_cuda"``.

    Raises:
        NotImplementedError: for arc detectors (ODL's FBP supports flat detectors only;
            :class:`Projector` has its own arc path).
    """
    _require_flat(geometry)
    import odl
    from odl.applications import tomo

    half_width = geometry.image_width_cm / 2.0
    space = odl.uniform_discr(
        [-half_width, -half_width], [half_width, half_width], geometry.image_shape, dtype="float32"
    )
    angle_partition = odl.uniform_partition(0.0, 2.0 * np.pi, geometry.num_views)
    half_span = geometry.detector_span / 2.0
    detector_partition = odl.uniform_partition(-half_span, half_span, geometry.num_det)
    odl_geometry = tomo.FanBeamGeometry(
        angle_partition, detector_partition, src_radius=geometry.source_origin_cm, det_radius=geometry.origin_det_cm
    )
    return tomo.RayTransform(space, odl_geometry, impl=impl)


def _require_flat(geometry: FanBeamGeometry) -> None:
    if geometry.detector != "flat":
        raise NotImplementedError(
            f"odl_ray_transform: detector={geometry.detector!r} is not supported (ODL's fan-beam FBP knows flat "
            "detectors only); Projector handles arc detectors without ODL"
        )


class _AstraWorkspace:
    """One set of ASTRA data and algorithm objects; a workspace serves one call at a time."""

    def __init__(self, astra: Any, projector_id: int, vol_geom: dict, proj_geom: dict) -> None:
        self.vol_id = astra.data2d.create("-vol", vol_geom, 0)
        self.sino_id = astra.data2d.create("-sino", proj_geom, 0)
        self.fp_id = self._algorithm(astra, "FP", projector_id)
        self.bp_id = self._algorithm(astra, "BP", projector_id)

    def _algorithm(self, astra: Any, name: str, projector_id: int) -> int:
        cfg = astra.astra_dict(name)
        cfg["ProjectorId"] = projector_id
        cfg["ProjectionDataId"] = self.sino_id
        cfg["VolumeDataId" if name == "FP" else "ReconstructionDataId"] = self.vol_id
        return astra.algorithm.create(cfg)

    def free(self, astra: Any) -> None:
        astra.algorithm.delete([self.fp_id, self.bp_id])
        astra.data2d.delete([self.vol_id, self.sino_id])


class Projector:
    """Fan-beam projector for one geometry.

    Args:
        geometry: a :class:`FanBeamGeometry` (flat or arc detector) or a preset name such as
            ``"640geo"`` or ``"adn"``.
        device: ``"auto"`` (CUDA if ASTRA has it, else CPU), ``"cpu"`` or ``"cuda"``; arc
            detectors run on the CPU only.
        num_workers: ASTRA CPU workspaces, i.e. CPU projections that may run at once in threads
            (ASTRA's CPU projector is single-threaded and releases the GIL).
        cpu_backprojector: ``"pixel"`` (default; matches the CUDA reference) or ``"astra"``
            (ASTRA's CPU ray-driven adjoint, run in ``num_workers`` threads by :meth:`fbp_many`;
            flat detectors only, since arc FBP needs the ``1/L^2`` pixel weights).
        bp_cache_bytes: memory allowed for the pixel-driven back-projection matrix (kept after
            the first FBP; ~440 MB at 640geo, ~84 MB at adn); 0 rebuilds it on every call (about
            8x slower). For arc detectors :meth:`backproject` (the adjoint) keeps a second matrix
            of that size, built on its first call.

    Raises:
        ValueError: for a bad ``num_workers``, ``cpu_backprojector`` or device name, or
            ``cpu_backprojector="astra"`` with an arc detector.
        NotImplementedError: for ``device="cuda"`` with an arc detector.

    The object owns ASTRA memory: call :meth:`close` (or use it as a context manager) to free it
    early; it is freed on garbage collection otherwise.
    """

    def __init__(
        self,
        geometry: FanBeamGeometry | str,
        device: str = "auto",
        num_workers: int = 2,
        cpu_backprojector: str = "pixel",
        bp_cache_bytes: int = 1 << 30,
    ) -> None:
        if isinstance(geometry, str):
            geometry = FanBeamGeometry.preset(geometry)
        if not isinstance(geometry, FanBeamGeometry):
            raise TypeError(
                f"Projector: geometry must be a FanBeamGeometry or preset name, got {type(geometry).__name__}"
            )
        if num_workers < 1:
            raise ValueError(f"Projector: num_workers must be >= 1, got {num_workers}")
        if cpu_backprojector not in _CPU_BACKPROJECTORS:
            raise ValueError(
                f"Projector: cpu_backprojector must be one of {_CPU_BACKPROJECTORS}, got {cpu_backprojector!r}"
            )
        self._arc = geometry.detector == "arc"
        if self._arc and cpu_backprojector != "pixel":
            raise ValueError(
                "Projector: arc detectors need cpu_backprojector='pixel' (equi-angular FBP weights pixels by "
                "1/L^2, which ASTRA's ray-driven adjoint cannot apply)"
            )
        self.geometry = geometry
        self.device = _resolve_arc_device(device) if self._arc else resolve_device(device)
        self.num_workers = int(num_workers)
        self.cpu_backprojector = cpu_backprojector
        self._bp_cache_bytes = int(bp_cache_bytes)
        # views that ASTRA computes per image rotation (flat: all views, in one run)
        self._astra_quarters = rotation_quarters(geometry) if self._arc else 1
        self._closed = False
        impl = "astra_cuda" if self.device == "cuda" else "astra_cpu"
        self._odl_ray = None if self._arc else odl_ray_transform(geometry, impl)
        self._ramp = self._build_ramp_filter()
        # ODL's adjoint = raw (unit-pixel) ASTRA back-projection * d_theta * d_u / pixel
        self._bp_scale = geometry.angle_step * geometry.det_spacing / geometry.pixel_size_cm
        self._workspaces: queue.SimpleQueue[_AstraWorkspace] = queue.SimpleQueue()
        self._all_workspaces: list[_AstraWorkspace] = []
        self._projector_id: int | None = None
        # _pixel_bp: the adjoint; _fbp_bp: the back-projection that completes fbp (flat: the same)
        self._pixel_bp: PixelDrivenBackprojector | None = None
        self._fbp_bp: PixelDrivenBackprojector | None = None
        self._adjoint_lock = threading.Lock()
        self._joseph: JosephForwardProjector | None = None
        if self.device == "cpu":
            self._init_astra_cpu()
            if self._arc:
                # the adjoint's own matrix is built by the first backproject() (the simulator never calls it)
                self._fbp_bp = PixelDrivenBackprojector(geometry, max_cache_bytes=bp_cache_bytes, weighting="fbp")
            elif cpu_backprojector == "pixel":
                self._pixel_bp = PixelDrivenBackprojector(geometry, max_cache_bytes=bp_cache_bytes)
                self._fbp_bp = self._pixel_bp
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ------------------------------------------------------------------------------- set-up
    def _build_ramp_filter(self) -> Any:
        if self._arc:
            return ArcRampFilter(self.geometry)
        from odl.applications import tomo

        return tomo.fbp_filter_op(self._odl_ray, padding=True, filter_type="Ram-Lak", frequency_scaling=1.0)

    def _astra_projection_geometry(self, astra: Any) -> dict:
        g = self.geometry
        if self._arc:
            # One ray per row, as ASTRA has no arc detector; its sinogram is (rows, 1). Only the
            # first quarter of the views: ASTRA converts the rows to text for every object that
            # holds the geometry (~2 s per object at adn for all views), and forward() gets the
            # other quarters by rotating the image.
            rows = g.num_views // self._astra_quarters * g.num_det
            return astra.create_proj_geom("fanflat_vec", 1, arc_astra_vectors(g)[:rows])
        # ASTRA's fanflat angle 0 puts the source on -y; ODL's puts it on +x: offset by -pi/2.
        return astra.create_proj_geom(
            "fanflat",
            g.det_spacing / g.pixel_size_cm,
            g.num_det,
            g.angles - np.pi / 2.0,
            g.source_origin_cm / g.pixel_size_cm,
            g.origin_det_cm / g.pixel_size_cm,
        )

    def _init_astra_cpu(self) -> None:
        astra = _astra()
        g = self.geometry
        vol_geom = astra.create_vol_geom(g.image_size, g.image_size)
        proj_geom = self._astra_projection_geometry(astra)
        self._projector_id = astra.create_projector("line_fanflat", proj_geom, vol_geom)
        for _ in range(self.num_workers):
            workspace = _AstraWorkspace(astra, self._projector_id, vol_geom, proj_geom)
            self._all_workspaces.append(workspace)
            self._workspaces.put(workspace)

    # ------------------------------------------------------------------------------- checks
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("Projector: used after close()")

    def _as_image(self, image: np.ndarray) -> np.ndarray:
        array = np.asarray(image)
        if array.shape != self.geometry.image_shape:
            raise ValueError(f"Projector: image must have shape {self.geometry.image_shape}, got {array.shape}")
        return np.ascontiguousarray(array, dtype=np.float32)

    def _as_sinogram(self, sinogram: np.ndarray) -> np.ndarray:
        array = np.asarray(sinogram)
        if array.shape != self.geometry.sinogram_shape:
            raise ValueError(
                f"Projector: sinogram must have shape {self.geometry.sinogram_shape} (views, bins), got {array.shape}"
            )
        return np.ascontiguousarray(array, dtype=np.float32)

    # ------------------------------------------------------------------------------- operators
    def forward(self, image: np.ndarray) -> np.ndarray:
        """Line integrals of ``image`` (1/cm) along all rays: a ``(views, bins)`` float32 sinogram."""
        self._check_open()
        image = self._as_image(image)
        if self.device == "cuda":
            return np.asarray(self._odl_ray(image).data, dtype=np.float32)
        if self._astra_quarters == 1:
            raw = self._run_cpu(image, "fp")
        else:
            # view v + qV/4 of the image is view v of the image turned back by q quarter turns
            turned = (np.ascontiguousarray(np.rot90(image, k=-q)) for q in range(self._astra_quarters))
            raw = np.concatenate([self._run_cpu(quarter, "fp") for quarter in turned])
        sinogram = raw.reshape(self.geometry.sinogram_shape) * np.float32(self.geometry.pixel_size_cm)
        return sinogram

    def forward_interpolating(self, image: np.ndarray) -> np.ndarray:
        """Forward projection with the CUDA projector's interpolating ray model.

        On CUDA this is :meth:`forward`; on CPU it runs
        :class:`~eqmar.ct.joseph.JosephForwardProjector` (about 5x slower than ASTRA's CPU line
        projector), whose metal traces match the CUDA reference (IoU >= 0.999). The simulator uses
        it for metal masks, which are projected once each.
        """
        self._check_open()
        image = self._as_image(image)
        if self.device == "cuda":
            return self.forward(image)
        if self._joseph is None:
            self._joseph = JosephForwardProjector(self.geometry)
        return self._joseph(image)

    def backproject(self, sinogram: np.ndarray) -> np.ndarray:
        """Back-projection scaled as ODL's adjoint (inner products weighted by pixel area and d_theta * d_u).

        Exactly the adjoint of :meth:`forward` with ``cpu_backprojector="astra"``; the pixel-driven
        default (and CUDA) interpolate, which matches the adjoint to within about 1 %. For arc
        detectors ``d_u`` is the fan-angle step and the weights ``d_theta / L`` use the
        source-pixel distance ``L`` in cm.
        """
        self._check_open()
        sinogram = self._as_sinogram(sinogram)
        if self.device == "cuda":
            return np.asarray(self._odl_ray.adjoint(sinogram).data, dtype=np.float32)
        if self._arc:
            return self._arc_adjoint()(sinogram)
        if self._pixel_bp is not None:
            return self._pixel_bp(sinogram)
        return self._run_cpu(sinogram, "bp") * np.float32(self._bp_scale)

    def _arc_adjoint(self) -> PixelDrivenBackprojector:
        with self._adjoint_lock:
            if self._pixel_bp is None:
                self._pixel_bp = PixelDrivenBackprojector(self.geometry, max_cache_bytes=self._bp_cache_bytes)
            return self._pixel_bp

    def ramp_filter(self, sinogram: np.ndarray) -> np.ndarray:
        """Ram-Lak filtering along the detector, identical to ODL's ``fbp_filter_op``.

        For arc detectors: the equi-angular filter of :class:`~eqmar.ct.arc.ArcRampFilter`
        (cosine weighting included), whose output :meth:`fbp` back-projects with ``1/L^2`` weights.
        """
        self._check_open()
        if self._arc:
            return self._ramp(self._as_sinogram(sinogram))
        return np.asarray(self._ramp(self._as_sinogram(sinogram)).data, dtype=np.float32)

    def fbp(self, sinogram: np.ndarray) -> np.ndarray:
        """Filtered back-projection (Ram-Lak, frequency scaling 1.0), as ODL's ``fbp_op``.

        For arc detectors: equi-angular FBP (Kak & Slaney 3.4.2), see :mod:`eqmar.ct.arc`.
        """
        if self._arc:
            return self._fbp_bp(self.ramp_filter(sinogram))
        return self.backproject(self.ramp_filter(sinogram))

    def fbp_many(self, sinograms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """FBP of several sinograms.

        The pixel-driven back-projector handles them in one pass (ray geometry computed once);
        the ASTRA CPU back-projector runs them in parallel threads.
        """
        self._check_open()
        if self._fbp_bp is not None and len(sinograms) > 1:
            filtered = np.stack([self.ramp_filter(s) for s in sinograms])
            return list(self._fbp_bp(filtered))
        if self.device == "cuda" or self.num_workers == 1 or len(sinograms) < 2:
            return [self.fbp(s) for s in sinograms]
        return list(self._thread_pool().map(self.fbp, sinograms))

    def _thread_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.num_workers, thread_name_prefix="eqmar-fbp")
            return self._pool

    def _run_cpu(self, data: np.ndarray, direction: str) -> np.ndarray:
        astra = _astra()
        workspace = self._workspaces.get()
        try:
            if direction == "fp":
                astra.data2d.store(workspace.vol_id, data)
                astra.algorithm.run(workspace.fp_id)
                return astra.data2d.get(workspace.sino_id)
            astra.data2d.store(workspace.sino_id, data)
            astra.algorithm.run(workspace.bp_id)
            return astra.data2d.get(workspace.vol_id)
        finally:
            self._workspaces.put(workspace)

    # ------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Free the ASTRA objects and worker threads (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._all_workspaces or self._projector_id is not None:
            astra = _astra()
            for workspace in self._all_workspaces:
                workspace.free(astra)
            self._all_workspaces.clear()
            if self._projector_id is not None:
                astra.projector.delete(self._projector_id)
                self._projector_id = None

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: ASTRA may already be gone
            pass

    def __repr__(self) -> str:
        g = self.geometry
        return (
            f"Projector({g.image_size}px, {g.num_views} views x {g.num_det} bins, device={self.device!r}, "
            f"cpu_backprojector={self.cpu_backprojector!r})"
        )
