#!/usr/bin/env bash
# Install what the browser tests (tests/browser, slow tier) need: Debian's chromium and
# chromium-driver (apt-get, as root or through sudo) and selenium in the Python environment.
# Idempotent and quiet: installs only what is missing, runs `apt-get update` only when the
# package lists lack a candidate. Usage: bash scripts/install_browser.sh [python]
# (python defaults to $PYTHON, else .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

py="${1:-${PYTHON:-}}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi

have_cmd() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]; }

missing=()
have_cmd chromium || missing+=(chromium)
have_cmd chromedriver || missing+=(chromium-driver)

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_browser: apt-get not found; install ${missing[*]} by hand" >&2
        exit 1
    fi
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "install_browser: need root (or passwordless sudo) to apt-get install ${missing[*]}" >&2
            exit 1
        fi
    fi
    # update the package lists only when one of the packages has no install candidate
    needs_update=0
    for pkg in "${missing[@]}"; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then needs_update=1; fi
    done
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; echo "install_browser: failed: $*" >&2; exit 1; }; }
    if [ $needs_update -eq 1 ]; then
        quiet "${sudo[@]}" apt-get update -qq
    fi
    install=("${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}")
    if ! "${install[@]}" >"$log" 2>&1; then
        [ $needs_update -eq 1 ] && { cat "$log" >&2; echo "install_browser: failed: ${install[*]}" >&2; exit 1; }
        quiet "${sudo[@]}" apt-get update -qq   # stale package lists (a 404 on the .deb): refresh once, retry
        quiet "${install[@]}"
    fi
fi

if ! "$py" -c "import selenium" >/dev/null 2>&1; then
    "$py" -m pip install -q --disable-pip-version-check "selenium>=4.20"
fi

# report what is there (one line) and fail if anything is still missing
chromium_bin=$(command -v chromium || echo /usr/bin/chromium)
driver_bin=$(command -v chromedriver || echo /usr/bin/chromedriver)
[ -x "$chromium_bin" ] || { echo "install_browser: chromium still missing" >&2; exit 1; }
[ -x "$driver_bin" ] || { echo "install_browser: chromedriver still missing" >&2; exit 1; }
"$py" -c "import selenium" || { echo "install_browser: selenium still missing for $py" >&2; exit 1; }
echo "install_browser: $("$chromium_bin" --version 2>/dev/null | head -1); selenium $("$py" -c 'import selenium; print(selenium.__version__)')"
