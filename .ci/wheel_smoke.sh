#!/usr/bin/env bash
# The package as a user gets it: build the wheel and the sdist, install the wheel into a clean venv
# (no system site-packages, no editable install, run from a temporary folder so that the repository
# is not on sys.path), then run the whole job on tiny-random with the installed `lens-bias` command.
# Usage: bash .ci/wheel_smoke.sh   (PY=python3.11 to pick the interpreter; KEEP=1 keeps the temp dir)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/lens_bias_wheel.XXXXXX")"
t0=$SECONDS
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$TMP"; echo "wheel_smoke [$((SECONDS - t0)) s] temp dir removed"' EXIT
step() { echo "wheel_smoke [$((SECONDS - t0)) s] $*"; }
# pip's output goes to a log, shown only when pip fails (this machine's index warns once per package)
quiet() { "$@" >"$TMP/pip.log" 2>&1 || { tail -40 "$TMP/pip.log"; echo "wheel_smoke: failed: $*"; exit 1; }; }

step "building the wheel and the sdist into $TMP/dist"
# the builder lives in its own venv (so does the build backend: python -m build isolates it)
"$PY" -m venv "$TMP/buildenv"
quiet "$TMP/buildenv/bin/pip" install -q --upgrade pip
quiet "$TMP/buildenv/bin/pip" install -q build
"$TMP/buildenv/bin/python" -m build --outdir "$TMP/dist" "$REPO" >"$TMP/build.log" 2>&1 \
    || { tail -30 "$TMP/build.log"; exit 1; }
wheel=$(ls "$TMP"/dist/lens_bias-*.whl)
sdist=$(ls "$TMP"/dist/lens_bias-*.tar.gz)
step "built $(basename "$wheel") and $(basename "$sdist")"

# what a wheel must hold: the bundled data and the console script
"$TMP/buildenv/bin/python" - "$wheel" "$REPO" <<'EOF'
import pathlib, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
data = [n for n in names if n.startswith("lens_bias/data/")]
src = pathlib.Path(sys.argv[2]) / "lens_bias" / "data"
want = sorted(f"lens_bias/data/{p.name}" for ext in ("json", "txt", "md") for p in src.glob(f"*.{ext}"))
missing = sorted(set(want) - set(data))
assert want and not missing, f"package data missing from the wheel: {missing or 'lens_bias/data/*'}"
ep = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
assert ep, "the wheel has no entry_points.txt"
text = zipfile.ZipFile(sys.argv[1]).read(ep).decode()
assert "lens-bias = lens_bias.cli.main:app" in text, f"no lens-bias console script in {text!r}"
print(f"wheel: {len(names)} files, {len(data)} under lens_bias/data/, entry point lens-bias")
EOF

step "installing into a clean venv"
"$PY" -m venv "$TMP/venv"
quiet "$TMP/venv/bin/pip" install -q --upgrade pip
# torch first, exactly as the Makefile installs it (the CPU build; a local file on the project machines)
quiet "$TMP/venv/bin/pip" install -q "torch==2.13.0"
quiet "$TMP/venv/bin/pip" install -q "$wheel"
step "installed"

mkdir -p "$TMP/work"
cd "$TMP/work"
"$TMP/venv/bin/python" - <<EOF
import lens_bias, sys
assert lens_bias.__file__.startswith("$TMP/venv/"), f"lens_bias imported from {lens_bias.__file__}, not the wheel"
assert not any(p.rstrip("/") == "$REPO" for p in sys.path), "the repository is on sys.path"
print("lens_bias", lens_bias.__version__, "from", lens_bias.__file__)
EOF
step "running lens-bias run on tiny-random"
"$TMP/venv/bin/lens-bias" run --model tiny-random --per-domain 3 --held-per-domain 3 --budgets 2% \
    --out "$TMP/run" --quiet
test -s "$TMP/run/metrics.json" || { echo "wheel_smoke: $TMP/run/metrics.json is missing"; exit 1; }
step "passed: $TMP/run/metrics.json written (total $((SECONDS - t0)) s)"
