"""eqmar.ct: fan-beam CT geometry, projectors and the SynDeepLesion metal-artifact simulator.

Also a small parallel-beam projector in PyTorch (:mod:`eqmar.ct.parallel`) for MAR inference where ASTRA is absent.

Names are resolved lazily (PEP 562) so that ``import eqmar.ct`` does not import ASTRA, ODL or torch.
"""

from __future__ import annotations

from eqmar.utils import lazy_exports

__all__ = [
    "ArcRampFilter",
    "FanBeamGeometry",
    "GEOMETRY_PRESETS",
    "ParallelBeamProjector",
    "Projector",
    "astra_cuda_available",
    "PixelDrivenBackprojector",
    "JosephForwardProjector",
    "Spectrum",
    "load_spectrum",
    "spekpy_spectrum",
    "mass_attenuation",
    "metal_attenuation",
    "PolychromaticModel",
    "hu_to_mu",
    "mu_to_hu",
    "prepare_hu",
    "resize_square",
    "split_tissue",
    "add_poisson_noise",
    "fit_water_bhc",
    "apply_bhc",
    "apply_partial_volume",
    "interpolate_trace",
    "metal_trace",
    "PreparedImage",
    "PreparedMask",
    "SynDeepLesionSimulator",
]

_LOCATIONS = {
    "ArcRampFilter": "arc",
    "FanBeamGeometry": "geometry",
    "GEOMETRY_PRESETS": "geometry",
    "ParallelBeamProjector": "parallel",
    "Projector": "projector",
    "astra_cuda_available": "projector",
    "PixelDrivenBackprojector": "backprojection",
    "JosephForwardProjector": "joseph",
    "Spectrum": "spectrum",
    "load_spectrum": "spectrum",
    "spekpy_spectrum": "spectrum",
    "mass_attenuation": "materials",
    "metal_attenuation": "metal",
    "PolychromaticModel": "physics",
    "hu_to_mu": "physics",
    "mu_to_hu": "physics",
    "prepare_hu": "physics",
    "resize_square": "physics",
    "split_tissue": "physics",
    "add_poisson_noise": "physics",
    "fit_water_bhc": "physics",
    "apply_bhc": "physics",
    "apply_partial_volume": "metal",
    "interpolate_trace": "metal",
    "metal_trace": "metal",
    "PreparedImage": "simulator",
    "PreparedMask": "simulator",
    "SynDeepLesionSimulator": "simulator",
}


__getattr__, __dir__ = lazy_exports(__name__, _LOCATIONS)
