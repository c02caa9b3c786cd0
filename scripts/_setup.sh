# Shared setup for scripts/test and scripts/demo; source it, do not run it.
#
#   ensure_venv EXTRAS         make .venv (if missing) and install Flask-LongTask editable with
#                              EXTRAS ("" or "test,dash,celery"); skipped when nothing changed
#   ensure_system_packages CMD=PKG ...
#                              apt-get install PKG for every CMD not on PATH (Debian/Ubuntu)
#   find_python NAME           the path of a working Python >= 3.10 called NAME (a command or a
#                              path; pyenv's versions too), or a message and status 1
#
# PYTHON=python3.13 picks the interpreter, and the virtualenv is then its own: .venv-3.13. Without
# PYTHON, python3 and .venv (LONGTASK_VENV overrides either). After ensure_venv, $VENV is the
# virtualenv, $VENV/bin is first on PATH and $VENV_TAG is "" (.venv) or the version ("3.13").

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

_say() { printf '==> %s\n' "$*" >&2; }

find_python() {
    local name="$1" path candidates=()
    if command -v "$name" >/dev/null 2>&1; then
        candidates+=("$(command -v "$name")")
    fi
    # pyenv's shims answer for every installed version but run only the active ones (`pyenv
    # global`): a version that is installed but not active is still found in pyenv's tree.
    if [[ "$name" != */* ]] && command -v pyenv >/dev/null 2>&1; then
        while IFS= read -r path; do
            candidates+=("$path")
        done < <(ls -d "$(pyenv root)"/versions/*/bin/"$name" 2>/dev/null | sort -rV)
    fi
    for path in "${candidates[@]}"; do
        if "$path" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
            echo "$path"
            return 0
        fi
    done
    if [ "${#candidates[@]}" -gt 0 ]; then
        _say "$name is not a Python >= 3.10 that runs here (tried: ${candidates[*]})."
    else
        _say "No Python called $name here (on PATH or in pyenv's versions)."
    fi
    return 1
}

VENV_TAG=""
if [ -n "${PYTHON:-}" ]; then
    PYTHON="$(find_python "$PYTHON")"
    VENV_TAG="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    VENV="${LONGTASK_VENV:-$ROOT/.venv-$VENV_TAG}"
else
    VENV="${LONGTASK_VENV:-$ROOT/.venv}"
fi

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
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"  # found above
    elif ! find_python python3; then
        _say "Flask-LongTask needs Python >= 3.10 as 'python3' (or set PYTHON=python3.13 or a path)."
        return 1
    fi
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
        # Git ignores it from inside (.gitignore lists .venv/ only; Python >= 3.13 writes this too).
        [ -f "$VENV/.gitignore" ] || printf '*\n' >"$VENV/.gitignore"
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
    # --no-compile: Python compiles what is imported, when it is; compiling all of it up front
    # (about 400 MB with the test extras) was a third of the install's time.
    "$VENV/bin/python" -m pip install --quiet --no-compile -e "$spec"
    echo "$hash $spec" >>"$stamp"
}
