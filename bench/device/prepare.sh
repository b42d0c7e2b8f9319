#!/usr/bin/env bash
# Prepare the GPU checks on the development machine: gather what the GPU machine lacks into .device/
# (ignored by git), which bench/device/run_checks.sh then uses there.
#
#   bash bench/device/prepare.sh            # here, once (needs the package registry and ../shared)
#   then, with the device tool:  run(command="bash bench/device/run_checks.sh", carry=[".device"])
#
# .device/ holds
#   wheels/       CPython 3.12 manylinux wheels of eqmar's dependencies that the GPU image does not
#                 ship (its python3 already has torch, numpy, scipy, h5py, scikit-image, matplotlib,
#                 tqdm, pyyaml, pytest), at the versions of this checkout's .venv where it has them;
#   lib/          libcufft.so.11, a stand-in built from cufft11_stub.c (see there): ASTRA's CUDA build
#                 needs it to load, and the real one (a 200 MB wheel) does not fit the 64 MiB that
#                 travels with a device call;
#   conformance/  the SynDeepLesion conformance subset the default tests use (gt.h5, testmask.npy,
#                 masks 3 and 7), since ../shared does not travel.
# Everything together stays under about 50 MB; the script prints the size.
set -euo pipefail
cd "$(dirname "$0")/../.."

KIT=${EQMAR_DEVICE_KIT:-.device}
# the GPU image's python3 (KINDS.md of the device tool: Python 3.12)
PYTHON_VERSION=${EQMAR_DEVICE_PYTHON:-3.12}
SHARED_SAMPLE=${EQMAR_CONFORMANCE_DIR:-../shared/conformance/syndeeplesion}
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

# distribution names; greenlet is sqlalchemy's compiled helper on x86-64
DISTS=(monai pytorch-ignite odl astra-toolbox nibabel pydicom xraydb array-api-compat future sqlalchemy greenlet
       platformdirs nvidia-cuda-runtime-cu12)

version_in_venv() {
    "$PY" -c "import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass" "$1"
}

rm -rf "$KIT"
mkdir -p "$KIT/wheels" "$KIT/lib" "$KIT/conformance"

echo "== wheels (CPython $PYTHON_VERSION, manylinux x86-64)"
for dist in "${DISTS[@]}"; do
    version=$(version_in_venv "$dist")
    spec=$dist${version:+==$version}
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$KIT/wheels" "$spec"
    echo "   $spec"
done

echo "== libcufft.so.11 stand-in"
cc -O2 -shared -fPIC -nostdlib -Wl,-soname,libcufft.so.11 -Wl,--version-script=bench/device/cufft11_stub.map \
    -o "$KIT/lib/libcufft.so.11" bench/device/cufft11_stub.c

echo "== conformance subset from $SHARED_SAMPLE"
if [ -f "$SHARED_SAMPLE/gt.h5" ]; then
    cp "$SHARED_SAMPLE"/{gt.h5,testmask.npy,3.h5,7.h5} "$KIT/conformance/"
else
    echo "   not found: the conformance test will skip on the GPU machine"
fi

echo "== $KIT: $(du -sh "$KIT" | cut -f1) (a device call carries at most 64 MiB with the working tree)"
