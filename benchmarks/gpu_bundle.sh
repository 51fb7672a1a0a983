#!/usr/bin/env bash
# The packages a lent GPU machine lacks (Ray, decord, PyAV, MLflow, ...), as two carries
# of under 64 MiB each (../shared/GPU_NOTES.md), and their installer there.
#
#   bash benchmarks/gpu_bundle.sh build            # here: .gpu_bundle/call1, .gpu_bundle/call2
#   bash benchmarks/gpu_bundle.sh check            # here: the bundle under python3.12
#   bash benchmarks/gpu_bundle.sh install DIR PART # there: unpack PART into DIR
#                                                  # (PYTHON=... if python3 is not the one)
#
# build downloads cp312 manylinux wheels with `pip download --python-version 3.12
# --only-binary=:all: --no-deps`, pinned to the versions in this project's .venv (what the
# tests ran with), into .gpu_bundle/ (listed in .git/info/exclude; never committed):
#   call1: Ray 2.60 unpacked without ray/jars, ray/rllib and tests/ folders, as tar.xz,
#          and what Ray Data/Train/Tune and the dashboard need beyond the machine's own
#          packages (torch, timm, transformers, pyarrow, pandas, aiohttp, grpcio,
#          prometheus-client), plus a few small ones it may lack (requests, click, ...);
#          and MLflow's sqlite store (sqlalchemy, alembic: there to even out the sizes);
#   call2: decord, PyAV, mlflow-skinny, FastAPI/uvicorn (Serve's ingress).
# install unpacks a part's wheels into DIR/site and makes DIR/venv: a venv of the
# machine's Python whose .pth adds the machine's site-packages first (its own versions
# win), then DIR/site. Ray's workers run that venv's python, so they see both without
# PYTHONPATH (which the project's runtime_env sets for its workers). The two `run` calls
# are in benchmarks/gpu_pipeline.py's docstring.
#
# Measured here (2026-12): call1 51.8 MiB (Ray's tar.xz 27.4 MB), call2 54.9 MiB (PyAV's
# wheel 35.8 MB, decord's 13.6 MB), 405 MB unpacked. `check` (python 3.12.1 with numpy,
# pyarrow, pandas, aiohttp, grpcio, prometheus-client and no torch, as the machine less its
# torch stack) imports ray, decord, av, mlflow, fastapi and runs ray.init(include_dashboard=
# True) and a Ray Data job decoding generated clips with decord in its workers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.gpu_bundle"
# python3.12 here: PY312, else pyenv's, else the one on PATH
PY312="${PY312:-$(ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)}"
PY312="${PY312:-python3.12}"

RAY_NEEDS=(
    aiohttp-cors annotated-types colorful distlib google-api-core google-auth
    googleapis-common-protos jsonschema jsonschema-specifications referencing rpds-py
    opencensus opencensus-context opentelemetry-api opentelemetry-sdk opentelemetry-proto
    opentelemetry-semantic-conventions opentelemetry-exporter-prometheus platformdirs
    proto-plus py-spy pyasn1 pyasn1-modules pydantic pydantic-core typing-inspection
    python-discovery smart-open tensorboardX virtualenv
    # small, and maybe on the machine already (then its own copy is used)
    msgpack click protobuf requests urllib3 idna certifi charset-normalizer wrapt
    importlib-metadata zipp cachetools six cryptography cffi pycparser
    # MLflow's sqlite store: here only to even out the two calls' sizes
    sqlalchemy alembic mako sqlparse
)
CALL2=(
    decord av
    mlflow-skinny mlflow-tracing databricks-sdk gitpython gitdb smmap python-dotenv cloudpickle
    fastapi starlette uvicorn python-multipart h11 anyio annotated-doc
)

unwheel() { # PYTHON TARGET WHEEL... : unpack wheels into TARGET, keeping file modes (Ray's
    # gcs_server and raylet must stay executable; zipfile alone drops the bits)
    local py="$1" target="$2"; shift 2
    "$py" - "$target" "$@" <<'EOF'
import pathlib, shutil, sys, zipfile
site = pathlib.Path(sys.argv[1])
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = pathlib.Path(z.extract(info, site))
            mode = info.external_attr >> 16 & 0o777
            if mode and not info.is_dir():
                path.chmod(mode)
# a wheel's <name>.data/{purelib,platlib} belong in site-packages itself
for data in site.glob("*.data"):
    for sub in ("purelib", "platlib"):
        if (data / sub).is_dir():
            shutil.copytree(data / sub, site, dirs_exist_ok=True)
    shutil.rmtree(data)
EOF
}

pinned() { # name -> name==version from the project's venv, else the bare name
    local v
    v="$("$ROOT/.venv/bin/python" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$1")"
    if [[ -n "$v" ]]; then echo "$1==$v"; else echo "$1"; fi
}

download() { # dir names...
    local dir="$1"; shift
    local specs=()
    for n in "$@"; do specs+=("$(pinned "$n")"); done
    "$ROOT/.venv/bin/pip" download --quiet --no-deps --only-binary=:all: \
        --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
        --platform manylinux1_x86_64 --platform linux_x86_64 \
        -d "$dir" "${specs[@]}"
}

build() {
    mkdir -p "$ROOT/.git/info"
    grep -qxF '/.gpu_bundle/' "$ROOT/.git/info/exclude" 2>/dev/null \
        || echo '/.gpu_bundle/' >> "$ROOT/.git/info/exclude"
    rm -rf "$BUNDLE"
    mkdir -p "$BUNDLE/call1" "$BUNDLE/call2" "$BUNDLE/work"
    download "$BUNDLE/work" ray
    download "$BUNDLE/call1" "${RAY_NEEDS[@]}"
    download "$BUNDLE/call2" "${CALL2[@]}"
    # Ray: unpacked, less what no run here needs (Java jars, RLlib, tests); the dashboard's
    # client build stays (its head refuses to start without it).
    local wheel stage
    wheel="$(ls "$BUNDLE"/work/ray-*.whl)"
    stage="$BUNDLE/work/ray"
    unwheel "$ROOT/.venv/bin/python" "$stage" "$wheel"
    rm -rf "$stage/ray/jars" "$stage/ray/rllib"
    find "$stage" -type d -name tests -prune -exec rm -rf {} +
    tar -C "$stage" -cf - . | xz -9 -T0 > "$BUNDLE/call1/$(basename "$wheel" .whl).tar.xz"
    rm -rf "$BUNDLE/work"
    du -sh "$BUNDLE/call1" "$BUNDLE/call2"
    du -b -s "$BUNDLE/call1" "$BUNDLE/call2" | awk '{printf "%s: %.1f MiB\n", $2, $1 / 2^20}'
}

install() { # DIR PART (on the lent machine)
    local dir="$1" part="$2" py="${PYTHON:-python3}"
    local name
    name="$(basename "$part")"
    if [[ "$name" != call1 && ! -f "$dir/call1.done" ]]; then
        echo "$dir: call 1 missing (the machine was replaced): run call 1 again" >&2
        exit 3
    fi
    "$py" -c 'import sys; print("installing for", sys.executable, sys.version.split()[0])'
    mkdir -p "$dir/site"
    for t in "$part"/*.tar.xz; do
        if [[ -e "$t" ]]; then tar -C "$dir/site" -xJf "$t"; fi
    done
    local wheels=("$part"/*.whl)
    if [[ -e "${wheels[0]}" ]]; then unwheel "$py" "$dir/site" "${wheels[@]}"; fi
    if [[ ! -x "$dir/venv/bin/python" ]]; then
        "$py" -m venv --without-pip "$dir/venv"
        local target
        target="$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        "$py" - "$dir/site" > "$target/avarnet_gpu_bundle.pth" <<'EOF'
import sys
outer = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
dirs = [*outer, sys.argv[1]]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))
EOF
    fi
    touch "$dir/$name.done"
    du -sh "$dir/site"
    "$dir/venv/bin/python" -c "import torch, ray; print('bundle ok: torch', torch.__version__, 'ray', ray.__version__)" \
        2>/dev/null || "$dir/venv/bin/python" -c "import ray; print('bundle ok: ray', ray.__version__)"
}

check() { # here: the bundle under python3.12 with the machine's own packages (no torch)
    local dir=/tmp/avarnet-bundle-check
    rm -rf "$dir"
    "$PY312" -m venv "$dir/machine"
    "$dir/machine/bin/pip" install --quiet numpy pyarrow pandas aiohttp grpcio \
        prometheus-client pyyaml packaging filelock tqdm typing-extensions
    PYTHON="$dir/machine/bin/python" install "$dir/gpu" "$BUNDLE/call1"
    PYTHON="$dir/machine/bin/python" install "$dir/gpu" "$BUNDLE/call2"
    (cd "$ROOT" && "$dir/gpu/venv/bin/python" - <<'EOF'
import sys, tempfile
import numpy as np
import ray
import decord, av, mlflow, fastapi, uvicorn  # noqa: F401
from avarnet.data.decode import DecodeOptions, iter_chunks
from avarnet.data.synthetic import generate_benchmark

print(sys.version.split()[0], "ray", ray.__version__, "decord", decord.__version__, "av",
      av.__version__, "mlflow", mlflow.__version__)
ray.init(num_cpus=2, include_dashboard=True,
         runtime_env={"env_vars": {"PYTHONPATH": "."}})
with tempfile.TemporaryDirectory() as d:
    rows = generate_benchmark(d, clips_per_class=1, seconds=2)
    opts = DecodeOptions(image_size=64, frames_per_segment=4)

    def decode(row):
        for c in iter_chunks(row["path"], opts):
            yield {"video_id": row["video_id"], "segments": c.frames.shape[0],
                   "decoder": c.decoder}

    ds = ray.data.from_items([{"video_id": r["video_id"], "path": r["path"]} for r in rows])
    out = ds.flat_map(decode).take_all()
    print("Ray Data decode job:", len(out), "chunks,", sum(r["segments"] for r in out),
          "segments, decoders", sorted({r["decoder"] for r in out}))
    assert len({r["video_id"] for r in out}) == len(rows)
ray.shutdown()
print("bundle check ok")
EOF
    )
    du -sh "$dir/gpu/site"
}

case "${1:-}" in
    build) build ;;
    check) check ;;
    install) install "$2" "$3" ;;
    *) echo "usage: $0 build | check | install DIR PART" >&2; exit 2 ;;
esac
