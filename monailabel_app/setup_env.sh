#!/usr/bin/env bash
# Create the MONAI Label app's own environment, monailabel_app/.venv, in one command:
#
#     bash monailabel_app/setup_env.sh            # create, or reuse when up to date
#     bash monailabel_app/setup_env.sh --force    # recreate from scratch
#
# Why a separate environment: MONAI Label 0.8.5 needs numpy < 2 (and pydicom < 3), while eqmar's
# simulation stack (ODL 1.0) needs numpy >= 2.3. This environment holds MONAI Label 0.8.5 and its
# runtime dependencies (requirements.txt, pinned), plus eqmar installed editable with its "infer"
# extra through pip's resolver: the app uses eqmar's networks, EQ-Reg, model files and MAR
# inference, never the simulator's "ct" extra (ODL, ASTRA), and computes the LI input with eqmar's
# PyTorch parallel-beam fallback.
#
# Environment variables:
#   PYTHON                 interpreter to build the venv from (default python3; 3.10 or 3.11, since
#                          MONAI Label 0.8.5 imports distutils)
#   MONAILABEL_APP_VENV    venv location (default monailabel_app/.venv)
#   MONAILABEL_APP_TORCH   pip requirement for torch instead of requirements.txt's (e.g. a CUDA build)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${MONAILABEL_APP_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.eqmar-app-installed"
start=$(date +%s)

if [ "${1:-}" = "--force" ]; then
    rm -rf "$venv"
elif [ -n "${1:-}" ]; then
    echo "usage: bash monailabel_app/setup_env.sh [--force]" >&2
    exit 2
fi

# the stamp records what the environment was built from; anything else means rebuild
fingerprint="$(cat "$here/requirements.txt" "$here/setup_env.sh" | sha256sum | cut -d' ' -f1) ${MONAILABEL_APP_TORCH:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] && [ -x "$venv/bin/python" ]; then
    echo "MONAI Label app environment is up to date: $venv"
    exit 0
fi

"$python" - <<'EOF'
import sys
if sys.version_info[:2] not in ((3, 10), (3, 11)):
    sys.exit(f"setup_env.sh: MONAI Label 0.8.5 needs Python 3.10 or 3.11 (it imports distutils); got {sys.version.split()[0]}. "
             "Set PYTHON to another interpreter.")
EOF

rm -rf "$venv"
echo "== creating $venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

echo "== runtime dependencies (requirements.txt)"
if [ -n "${MONAILABEL_APP_TORCH:-}" ]; then
    "${pip[@]}" "$MONAILABEL_APP_TORCH"
    "${pip[@]}" -r <(grep -v '^torch==' "$here/requirements.txt")
else
    "${pip[@]}" -r "$here/requirements.txt"
fi

echo "== monailabel 0.8.5, without its dependency list (it would pull numpy<2 packages we pin above and sam2)"
"${pip[@]}" --no-deps "monailabel==0.8.5"
# eqmar's core (torch, numpy>=1.26, MONAI, Ignite) and its "infer" extra (DICOM/NIfTI/PNG, scipy,
# tqdm) are all satisfied by the pins above; pip's resolver checks that and fails loudly if not.
echo "== eqmar (editable) with the extra the app needs: eqmar[infer]"
"${pip[@]}" -e "$root[infer]"
"$venv/bin/python" -m pip check --disable-pip-version-check 2>&1 | grep -i "^eqmar" && exit 1 || true

echo "== checking the app's imports (no simulation stack allowed)"
(cd "$here" && MONAI_LABEL_TRACKING_ENABLED=false "$venv/bin/python" - <<'EOF'
import sys

import monailabel.app  # noqa: F401  (the server module: fails early on a missing dependency)
import main  # noqa: F401  (the app itself, with lib.infers and lib.trainers)
import numpy

leaked = sorted(m for m in ("odl", "astra", "spekpy", "xraydb") if m in sys.modules)
if leaked:
    sys.exit(f"setup_env.sh: the app imported the simulation stack: {leaked}")
from eqmar.apps.mar.inferer import fanbeam_physics_available

print(f"numpy {numpy.__version__}; monailabel {monailabel.__version__}; fan-beam physics available: {fanbeam_physics_available()}")
EOF
)

echo "$fingerprint" > "$stamp"
echo "MONAI Label app environment ready in $(( $(date +%s) - start )) s: $venv"
