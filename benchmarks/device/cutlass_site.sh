# Sourced by the device scripts that build the CUTLASS op: the nvidia-cutlass wheel from WHEELS
# (default .whl; no network needed) unpacked into a scratch directory put on PYTHONPATH, for
# its headers. Needs PY (the Python with torch); exits the calling script with 2 on failure.
# CUTLASS_SITE names a fixed directory, so that scripts run one after another on one machine see
# the same header path and share one extension build (the path is part of its build flags).
WHEELS=${WHEELS:-.whl}
SITE=${CUTLASS_SITE:-$(mktemp -d /tmp/cutlass_site.XXXXXX)}
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
wheel=$(ls "$WHEELS"/nvidia_cutlass-*.whl 2>/dev/null | head -1)
if [ -z "$wheel" ]; then
  echo "no nvidia_cutlass-*.whl in $WHEELS"; exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$wheel" || { echo "installing $wheel failed"; exit 2; }
