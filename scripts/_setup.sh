# Shared setup for scripts/test and scripts/demo; source it, do not run it.
#
#   ensure_venv EXTRAS         make .venv (if missing) and install Flask-LongTask editable with
#                              EXTRAS ("" or "test,dash,celery"); skipped when nothing changed
#   ensure_system_packages CMD=PKG ...
#                              apt-get install PKG for every CMD not on PATH (Debian/Ubuntu)
#
# After ensure_venv, $VENV is the virtualenv and $VENV/bin is first on PATH.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LONGTASK_VENV:-$ROOT/.venv}"
cd "$ROOT"

_say() { printf '==> %s\n' "$*" >&2; }

_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        _say "Need root to run: $*"
        return 1
    fi
}

_apt_updated=false
_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _say "Please install these packages with your system's package manager: $*"
        return 1
    fi
    if [ "$_apt_updated" = false ]; then
        _say "apt-get update"
        _as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _apt_updated=true
    fi
    _say "apt-get install $*"
    _as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

ensure_system_packages() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%=*}" >/dev/null 2>&1 || missing+=("${spec#*=}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        _apt_install "${missing[@]}"
    fi
}

_python() {
    local py
    for py in "${PYTHON:-}" python3; do
        if [ -n "$py" ] && command -v "$py" >/dev/null 2>&1; then
            if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
                echo "$py"
                return 0
            fi
        fi
    done
    _say "Flask-LongTask needs Python >= 3.10 as 'python3' (or set PYTHON=/path/to/python)."
    return 1
}

ensure_venv() {
    local extras="$1" spec="." stamp hash py
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x "$VENV/bin/python" ]; then
        py="$(_python)"
        _say "Creating virtualenv $VENV"
        if ! "$py" -m venv "$VENV"; then
            # Debian's python3 ships venv (and ensurepip) separately.
            rm -rf "$VENV"
            _apt_install python3-venv
            "$py" -m venv "$VENV"
        fi
    fi
    export PATH="$VENV/bin:$PATH"
    # Re-install only when the packaging files, the set of packages (an editable install maps
    # each top-level package) or the extras changed. Any install covers the bare package.
    stamp="$VENV/.flask-longtask-installed"
    hash="$({ cat setup.cfg pyproject.toml; ls -d -- */__init__.py 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && { grep -qxF "$hash $spec" "$stamp" || { [ -z "$extras" ] && grep -q "^$hash " "$stamp"; }; }; then
        return 0
    fi
    _say "Installing Flask-LongTask (editable) with pip: $spec"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$spec"
    echo "$hash $spec" >>"$stamp"
}
