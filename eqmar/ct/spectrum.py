"""X-ray tube spectra for polychromatic projection.

The default is the GE 14-degree-anode 120 kVp spectrum shipped with eqmar
(``eqmar/ct/resources/ge14_spectrum_120kvp.csv``) restricted to 20..120 keV in 1 keV bins, as in the
SynDeepLesion protocol. :func:`spekpy_spectrum` computes a close alternative with SpekPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Spectrum", "load_spectrum", "spekpy_spectrum", "DEFAULT_SPECTRUM_FILE"]

DEFAULT_SPECTRUM_FILE = Path(__file__).resolve().parent / "resources" / "ge14_spectrum_120kvp.csv"
_PROTOCOL_RANGE_KEV = (20.0, 120.0)


@dataclass(frozen=True)
class Spectrum:
    """Discrete photon spectrum.

    Args:
        energies_kev: bin energies in keV, strictly increasing, positive.
        weights: relative photon counts per bin, non-negative, not all zero (normalised on creation).
    """

    energies_kev: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        energies = np.asarray(self.energies_kev, dtype=np.float64)
        weights = np.asarray(self.weights, dtype=np.float64)
        if energies.ndim != 1 or energies.shape != weights.shape or energies.size == 0:
            raise ValueError(
                f"Spectrum: energies_kev and weights must be 1-D of equal length, "
                f"got {energies.shape} and {weights.shape}"
            )
        if np.any(energies <= 0) or np.any(np.diff(energies) <= 0):
            raise ValueError("Spectrum: energies_kev must be positive and strictly increasing")
        if np.any(weights < 0) or not np.isfinite(weights).all() or weights.sum() <= 0:
            raise ValueError("Spectrum: weights must be finite, non-negative and not all zero")
        object.__setattr__(self, "energies_kev", energies)
        object.__setattr__(self, "weights", weights / weights.sum())

    def restricted(self, min_kev: float, max_kev: float) -> Spectrum:
        """The bins with ``min_kev <= E <= max_kev``."""
        keep = (self.energies_kev >= min_kev) & (self.energies_kev <= max_kev)
        if not keep.any():
            raise ValueError(f"Spectrum.restricted: no bins in [{min_kev}, {max_kev}] keV")
        return Spectrum(self.energies_kev[keep], self.weights[keep])

    def without_empty_bins(self) -> Spectrum:
        """Drop zero-weight bins (they contribute nothing and cost an exponential each)."""
        keep = self.weights > 0
        return Spectrum(self.energies_kev[keep], self.weights[keep])


def load_spectrum(
    path: str | Path | None = None, energy_range_kev: tuple[float, float] = _PROTOCOL_RANGE_KEV
) -> Spectrum:
    """Read a two-column CSV spectrum (keV, relative weight; ``#`` comments and a header allowed).

    Args:
        path: CSV file; ``None`` loads the packaged GE 120 kVp spectrum.
        energy_range_kev: keep bins in this closed range (the protocol uses 20..120 keV).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file does not hold two numeric columns.
    """
    csv_path = DEFAULT_SPECTRUM_FILE if path is None else Path(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"load_spectrum: spectrum file not found: {csv_path}")
    try:
        table = np.genfromtxt(csv_path, delimiter=",", comments="#", skip_header=0, dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"load_spectrum: cannot parse {csv_path}: {err}") from err
    table = np.atleast_2d(table)
    table = table[np.isfinite(table).all(axis=1)] if table.ndim == 2 else table  # drops the header row
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] == 0:
        raise ValueError(f"load_spectrum: {csv_path} must hold two numeric columns (keV, weight)")
    try:
        return Spectrum(table[:, 0], table[:, 1]).restricted(*energy_range_kev)
    except ValueError as err:  # negative weights, energies in eV, nothing in the range: name the file
        raise ValueError(f"load_spectrum: {csv_path}: {err}") from err


def spekpy_spectrum(
    kvp: float = 120.0,
    anode_angle_deg: float = 12.0,
    al_filtration_mm: float = 3.0,
    energy_range_kev: tuple[float, float] = _PROTOCOL_RANGE_KEV,
) -> Spectrum:
    """Tube spectrum from SpekPy in 1 keV bins (an alternative to the packaged GE table).

    Args:
        kvp: tube voltage.
        anode_angle_deg: anode angle (``th`` in SpekPy).
        al_filtration_mm: added aluminium filtration.
        energy_range_kev: keep bins in this closed range.
    """
    from eqmar.utils import optional_import

    spekpy = optional_import("spekpy", "eqmar.ct.spectrum (X-ray spectra)")
    spek = spekpy.Spek(kvp=kvp, th=anode_angle_deg, dk=1.0)
    spek.filter("Al", al_filtration_mm)
    energies, fluence = spek.get_spectrum()
    return Spectrum(np.asarray(energies), np.asarray(fluence)).restricted(*energy_range_kev)
