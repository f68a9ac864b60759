# Sourced by scripts/serve and scripts/test: makes .venv with the project installed.
# Usage: ensure_venv [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DISCOVERY_VENV:-$ROOT/.venv}"

ensure_venv() {
  local extras="${1:-}"
  local stamp="$VENV/.installed${extras:+-$extras}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Installed again when the project's metadata or the C index kernel changed (an old build
  # of the kernel lacks the functions a newer index calls).
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] \
    || [ "$ROOT/discovery/index/_probe.c" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT${extras:+[$extras]}"
    touch "$stamp"
  fi
}

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" != "0" ]; then
    echo "redis-server and redis-cli are needed for the Redis tests: apt-get install redis-server redis-tools" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
  # The Debian package starts a system redis on 6379; the tests start their own.
  (service redis-server stop || true) >/dev/null 2>&1
}
