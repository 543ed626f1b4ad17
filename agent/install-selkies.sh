#!/bin/sh
# Install Selkies 2.x, pinned in selkies-requirements.txt, into its own virtual environment at
# $1 (default /opt/selkies). The session image (agent/Dockerfile.selkies) and CI's end-to-end
# test run these same steps, so what CI proves is what the image does.
set -eu
prefix="${1:-/opt/selkies}"
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$prefix"
"$prefix/bin/pip" install --no-cache-dir --quiet --upgrade pip
"$prefix/bin/pip" install --no-cache-dir --quiet -r "$here/selkies-requirements.txt"
"$prefix/bin/selkies" --help >/dev/null
