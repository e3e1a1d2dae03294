#!/usr/bin/env bash
# Runs every test binary of one workspace package (`$1`), built exactly as
# `cargo test --workspace` builds it, from the package's directory as cargo
# would; the remaining arguments go to each binary (a filter, --nocapture).
#
# `cargo test -p <package>` would resolve the package's dependencies' features
# on their own and rebuild them (minutes on two cores); the binaries of the
# workspace build are already there after `cargo test --workspace`.
set -euo pipefail
package="$1"
shift
cd "$(dirname "$0")/.."
binaries="$(
    cargo test --workspace --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, os, sys
package = sys.argv[1]
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") != "compiler-artifact" or not message.get("executable"):
        continue
    if not message.get("profile", {}).get("test"):
        continue
    # A path package'"'"'s id: path+file:///…/dir#name@version, or
    # path+file:///…/name#version when its directory has its name.
    name = message["package_id"]
    if f"#{package}@" not in name and f"/{package}#" not in name:
        continue
    print(os.path.dirname(message["manifest_path"]), message["executable"], sep="\t")
' "$package"
)"
if [ -z "$binaries" ]; then
    echo "test-package: no test binary of $package (is it a workspace package?)" >&2
    exit 1
fi
status=0
while IFS=$'\t' read -r dir exe; do
    (cd "${dir:-.}" && "$exe" "$@") || status=1
done <<<"$binaries"
exit "$status"
