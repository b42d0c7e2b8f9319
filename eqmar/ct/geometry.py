"""Fan-beam CT acquisition geometry as an immutable value object.

All lengths are in centimetres, so projections computed with a geometry are dimensionless line
integrals of attenuation maps given in 1/cm. Views sit at angular cell midpoints
``(i + 0.5) * 2*pi / num_views``, the convention of the SynDeepLesion ("640geo") protocol.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FanBeamGeometry", "GEOMETRY_PRESETS", "fan_flat_vectors", "fan_view_frames", "rotation_quarters"]

_DETECTOR_KINDS = ("flat", "arc")

# Pixel size of the published 640geo data: DeepLesion's 512 px at 0.03 cm, resampled to 416 px.
_PIXEL_640GEO_CM = 512 / 416 * 0.03
# Source-centre and centre-detector distances of 640geo, 1075 pixels.
_DISTANCE_640GEO_PX = 1075


@dataclass(frozen=True)
class FanBeamGeometry:
    """A 2-D fan-beam geometry with a centred square image.

    Args:
        image_size: number of pixels per image side.
        pixel_size_cm: pixel edge length in cm.
        num_views: number of projection angles over a full turn ``[0, 2*pi)``.
        num_det: number of detector bins.
        det_spacing: detector bin spacing: cm for a flat detector, radians (fan angle) for an arc.
        source_origin_cm: distance source - rotation centre in cm.
        origin_det_cm: distance rotation centre - detector in cm.
        detector: ``"flat"`` or ``"arc"`` (equi-angular, centred on the source).

    Raises:
        ValueError: when a field is not positive, ``detector`` is unknown, the source lies inside
            the image's circumscribed circle, or the fan does not cover the inscribed circle (the
            reconstructed field of view; the corners outside it may be truncated, as in 640geo).
    """

    image_size: int
    pixel_size_cm: float
    num_views: int
    num_det: int
    det_spacing: float
    source_origin_cm: float
    origin_det_cm: float
    detector: str = "flat"

    def __post_init__(self) -> None:
        for name in ("image_size", "num_views", "num_det"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"FanBeamGeometry.{name} must be a positive integer, got {value!r}")
        for name in ("pixel_size_cm", "det_spacing", "source_origin_cm", "origin_det_cm"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"FanBeamGeometry.{name} must be a positive finite number, got {value!r}")
        if self.detector not in _DETECTOR_KINDS:
            raise ValueError(f"FanBeamGeometry.detector must be one of {_DETECTOR_KINDS}, got {self.detector!r}")
        if self.field_of_view_radius_cm >= self.source_origin_cm:
            raise ValueError(
                "FanBeamGeometry: the source lies inside the image circle "
                f"(source_origin_cm={self.source_origin_cm} <= radius {self.field_of_view_radius_cm:.3f} cm)"
            )
        inscribed = self.image_width_cm / 2.0
        if self.covered_radius_cm < inscribed:
            raise ValueError(
                f"FanBeamGeometry: the detector ({self.num_det} bins of {self.det_spacing} "
                f"{'cm' if self.detector == 'flat' else 'rad'}) covers a disc of radius "
                f"{self.covered_radius_cm:.3f} cm, smaller than the image's inscribed circle ({inscribed:.3f} cm); "
                "projections would be truncated. Use more bins or wider ones."
            )

    # ----------------------------------------------------------------------------- derived values
    @property
    def image_width_cm(self) -> float:
        """Edge length of the (square) image in cm."""
        return self.image_size * self.pixel_size_cm

    @property
    def field_of_view_radius_cm(self) -> float:
        """Radius of the circle circumscribing the image, in cm."""
        return self.image_width_cm / math.sqrt(2.0)

    @property
    def angles(self) -> np.ndarray:
        """View angles in radians at cell midpoints ``(i + 0.5) * 2*pi / num_views`` (float64)."""
        return (np.arange(self.num_views) + 0.5) * (2.0 * np.pi / self.num_views)

    @property
    def angle_step(self) -> float:
        """Angular increment between views in radians."""
        return 2.0 * np.pi / self.num_views

    @property
    def covered_radius_cm(self) -> float:
        """Radius of the disc around the rotation centre that every view's fan covers, in cm."""
        if self.detector == "flat":
            half_fan = math.atan(self.detector_span / 2.0 / (self.source_origin_cm + self.origin_det_cm))
        else:
            half_fan = self.detector_span / 2.0
        return self.source_origin_cm * math.sin(min(half_fan, math.pi / 2))

    @property
    def detector_span(self) -> float:
        """Total detector extent: cm (flat) or radians (arc)."""
        return self.num_det * self.det_spacing

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """Shape ``(num_views, num_det)`` of sinograms."""
        return (self.num_views, self.num_det)

    @property
    def image_shape(self) -> tuple[int, int]:
        """Shape ``(image_size, image_size)`` of images."""
        return (self.image_size, self.image_size)

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def preset(cls, name: str) -> FanBeamGeometry:
        """Return a named geometry.

        Args:
            name: ``"640geo"`` (SynDeepLesion, the default everywhere), ``"dudonet"`` (DuDoNet's
                0.08 cm pixels, same geometry in pixel units) or ``"adn"`` (MATLAB/ADN variant:
                equi-angular arc detector with 0.1 degree bins, 256 px, 320 views). For ``"adn"`` the
                field of view (15.36 cm) and distances (39.69 cm) are those of 640geo and the number
                of bins is the smallest odd count whose fan covers the image's circumscribed circle.

        Raises:
            ValueError: for an unknown name.
        """
        key = name.lower()
        if key not in GEOMETRY_PRESETS:
            raise ValueError(f"FanBeamGeometry.preset: unknown preset {name!r}; known: {sorted(GEOMETRY_PRESETS)}")
        return GEOMETRY_PRESETS[key]

    def scaled(self, image_size: int, num_views: int | None = None, num_det: int | None = None) -> FanBeamGeometry:
        """Derive a geometry with another image size but the same physical set-up.

        The field of view and the distances stay the same in cm; the pixel size follows the new
        image size. For a flat detector the total detector span is kept and the bin count scales
        with the image size (rounded to the nearest odd number, e.g. 641 bins at 416 px gives 197
        at 128 px); for an arc detector the angular span is kept likewise.

        Args:
            image_size: new number of pixels per side.
            num_views: new number of views (default: unchanged).
            num_det: explicit number of detector bins (default: scaled as described).

        Raises:
            ValueError: for non-positive sizes.
        """
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
            raise ValueError(f"FanBeamGeometry.scaled: image_size must be a positive integer, got {image_size!r}")
        if num_det is None:
            num_det = _nearest_odd(self.num_det * image_size / self.image_size)
        return dataclasses.replace(
            self,
            image_size=int(image_size),
            pixel_size_cm=self.image_width_cm / image_size,
            num_views=self.num_views if num_views is None else num_views,
            num_det=int(num_det),
            det_spacing=self.detector_span / num_det,
        )


def _nearest_odd(value: float) -> int:
    """Nearest odd integer >= 1 (an odd bin count keeps a bin on the central ray)."""
    rounded = int(round(value))
    if rounded % 2 == 0:
        rounded += 1 if value >= rounded else -1
    return max(rounded, 1)


def _flat_preset(image_size: int, pixel_size_cm: float, num_views: int, num_det: int) -> FanBeamGeometry:
    """Flat-detector geometry laid out like 640geo in pixel units (span 2*sqrt(2)*width)."""
    width = image_size * pixel_size_cm
    return FanBeamGeometry(
        image_size=image_size,
        pixel_size_cm=pixel_size_cm,
        num_views=num_views,
        num_det=num_det,
        det_spacing=2.0 * math.sqrt(2.0) * width / num_det,
        source_origin_cm=_DISTANCE_640GEO_PX * pixel_size_cm,
        origin_det_cm=_DISTANCE_640GEO_PX * pixel_size_cm,
        detector="flat",
    )


def _adn_preset() -> FanBeamGeometry:
    """Arc-detector variant with 0.1 degree bins on the 640geo field of view and distances."""
    width = 416 * _PIXEL_640GEO_CM
    distance = _DISTANCE_640GEO_PX * _PIXEL_640GEO_CM
    bin_rad = math.radians(0.1)
    half_fan = math.asin(width / math.sqrt(2.0) / distance)
    num_det = int(math.ceil(2.0 * half_fan / bin_rad))
    num_det += 1 - num_det % 2
    return FanBeamGeometry(
        image_size=256,
        pixel_size_cm=width / 256,
        num_views=320,
        num_det=num_det,
        det_spacing=bin_rad,
        source_origin_cm=distance,
        origin_det_cm=distance,
        detector="arc",
    )


GEOMETRY_PRESETS: dict[str, FanBeamGeometry] = {
    "640geo": _flat_preset(416, _PIXEL_640GEO_CM, 640, 641),
    "dudonet": _flat_preset(416, 512 / 416 * 0.08, 640, 641),
    "adn": _adn_preset(),
}


def fan_flat_vectors(geometry: FanBeamGeometry) -> np.ndarray:
    """Per-view source, detector-centre and bin-step vectors in cm, shape ``(views, 6)``.

    Columns are ``(src_x, src_y, det_x, det_y, u_x, u_y)`` in ASTRA's ``fanflat_vec`` convention
    (image x to the right, y up), for ODL's angle convention (view angle theta puts the source at
    ``R_s (-cos theta, -sin theta)``).
    """
    astra_angles = geometry.angles - np.pi / 2.0
    sin, cos = np.sin(astra_angles), np.cos(astra_angles)
    return np.stack(
        [
            sin * geometry.source_origin_cm,
            -cos * geometry.source_origin_cm,
            -sin * geometry.origin_det_cm,
            cos * geometry.origin_det_cm,
            cos * geometry.det_spacing,
            sin * geometry.det_spacing,
        ],
        axis=1,
    )


def fan_view_frames(geometry: FanBeamGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-view source position and unit axes of the fan, for flat and arc detectors alike.

    Returns:
        ``(sources, central_axes, bin_axes)``, each ``(views, 2)`` float64: the source in cm, the
        unit vector from the source through the rotation centre, and the unit vector along which
        the bin index grows (the flat detector's bin step, :func:`fan_flat_vectors`). An arc bin
        at fan angle ``gamma`` looks along ``cos(gamma) * central + sin(gamma) * bin_axis``, so
        arc and flat bins of equal index lie on the same side of the central ray.
    """
    vectors = fan_flat_vectors(geometry)
    sources, detector_centres, steps = vectors[:, 0:2], vectors[:, 2:4], vectors[:, 4:6]
    central = detector_centres - sources
    central /= np.linalg.norm(central, axis=1, keepdims=True)
    bin_axes = steps / np.linalg.norm(steps, axis=1, keepdims=True)
    return sources, central, bin_axes


def rotation_quarters(geometry: FanBeamGeometry) -> int:
    """4 when view ``v + V/4`` is view ``v`` turned by 90 degrees (``V`` a multiple of 4), else 1.

    The centred square pixel grid maps onto itself under that turn, so a projector may compute a
    quarter of the views and get the others by rotating images (``numpy.rot90``).
    """
    return 4 if geometry.num_views % 4 == 0 else 1
