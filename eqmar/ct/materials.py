"""Mass attenuation coefficients of the materials in the metal-artifact simulation.

Values come from ``xraydb`` (Elam tables, "total" = photo-electric + incoherent + coherent), which
reproduces the NIST tables used by the SynDeepLesion protocol: water ``H2O``, cortical bone by its
ICRU-44 mass fractions, and metals by element.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "REFERENCE_ENERGY_KEV",
    "BONE_ICRU44_MASS_FRACTIONS",
    "METAL_DENSITIES",
    "metal_symbol",
    "mass_attenuation",
    "attenuation_ratios",
]

#: Energy at which the monochromatic attenuation maps are defined (keV).
REFERENCE_ENERGY_KEV = 70.0

#: Cortical bone (ICRU-44) composition by mass.
BONE_ICRU44_MASS_FRACTIONS: Mapping[str, float] = {
    "H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001,
    "Mg": 0.002, "P": 0.103, "S": 0.003, "Ca": 0.225,
}

#: Densities (g/cm^3) of implant metals selectable by symbol or name.
METAL_DENSITIES: Mapping[str, float] = {
    "Ti": 4.5,  # the protocol's titanium
    "Fe": 7.874,
    "Cr": 7.19,
    "Co": 8.9,
    "Ni": 8.908,
    "Cu": 8.96,
    "Zr": 6.52,
    "Ag": 10.49,
    "Ta": 16.69,
    "Pt": 21.45,
    "Au": 19.3,
    "Al": 2.699,
}

_METAL_NAMES = {
    "titanium": "Ti", "iron": "Fe", "steel": "Fe", "chromium": "Cr", "cobalt": "Co", "nickel": "Ni",
    "copper": "Cu", "zirconium": "Zr", "silver": "Ag", "tantalum": "Ta", "platinum": "Pt", "gold": "Au",
    "aluminium": "Al", "aluminum": "Al",
}
_WATER_ALIASES = ("water", "h2o")
_BONE_ALIASES = ("bone", "cortical_bone", "bone_icru44")


def metal_symbol(metal: str) -> str:
    """Canonical element symbol for a metal given by symbol (``"Ti"``) or name (``"titanium"``).

    Raises:
        ValueError: for an unknown metal.
    """
    if not isinstance(metal, str):
        raise ValueError(f"metal must be a string such as 'Ti' or 'titanium', got {metal!r}")
    key = metal.strip()
    if key.lower() in _METAL_NAMES:
        return _METAL_NAMES[key.lower()]
    for symbol in METAL_DENSITIES:
        if key.lower() == symbol.lower():
            return symbol
    known = sorted(set(METAL_DENSITIES) | set(_METAL_NAMES))
    raise ValueError(f"metal: unknown metal {metal!r}; known: {known}")


def _energies_ev(energies_kev: np.ndarray | float) -> np.ndarray:
    energies = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    if energies.ndim != 1 or np.any(~np.isfinite(energies)) or np.any(energies <= 0):
        raise ValueError(f"energies_kev must be positive finite values, got {energies_kev!r}")
    return energies * 1000.0


def mass_attenuation(material: str, energies_kev: np.ndarray | float) -> np.ndarray:
    """Mass attenuation coefficient µ/ρ (cm²/g) of ``material`` at the given energies.

    Args:
        material: ``"water"``, ``"bone"`` (cortical, ICRU-44) or a metal symbol/name (``"Ti"``).
        energies_kev: one energy or a 1-D array of energies in keV.

    Returns:
        float64 array with one value per energy.

    Raises:
        ValueError: for an unknown material or invalid energies.
    """
    from eqmar.utils import optional_import

    xraydb = optional_import("xraydb", "eqmar.ct.materials (attenuation tables)")
    energies_ev = _energies_ev(energies_kev)
    key = material.strip().lower() if isinstance(material, str) else material
    if key in _WATER_ALIASES:
        return np.asarray(xraydb.material_mu("H2O", energies_ev, density=1.0), dtype=np.float64)
    if key in _BONE_ALIASES:
        mu = np.zeros_like(energies_ev)
        for element, fraction in BONE_ICRU44_MASS_FRACTIONS.items():
            mu += fraction * np.asarray(xraydb.mu_elam(element, energies_ev), dtype=np.float64)
        return mu
    symbol = metal_symbol(material)
    return np.asarray(xraydb.material_mu(symbol, energies_ev, density=1.0), dtype=np.float64)


def attenuation_ratios(material: str, energies_kev: np.ndarray) -> np.ndarray:
    """µ(E)/µ(70 keV) of ``material``: scales a 70 keV line integral to energy E."""
    return mass_attenuation(material, energies_kev) / mass_attenuation(material, REFERENCE_ENERGY_KEV)[0]
