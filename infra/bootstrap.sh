#!/usr/bin/env bash
# Install what Tapstream needs on a fresh Debian/Ubuntu machine (CI or a developer's box):
# the PostgreSQL server binaries, Java 17+, Maven, Python 3.11, and .venv with Tapstream
# installed editable. Idempotent: it only does what is missing, so a second run takes a moment.
#
#   infra/bootstrap.sh                  quiet; prints only what it changes, and errors
#   VERBOSE=1 infra/bootstrap.sh        show the commands' own output
#   DRY_RUN=1 infra/bootstrap.sh        say what would be installed, change nothing
#
# Root runs apt-get directly; anyone else needs sudo. `make install` calls this script.
set -euo pipefail

cd "$(dirname "$0")/.."
VERBOSE=${VERBOSE:-0}
DRY_RUN=${DRY_RUN:-0}
VENV=.venv
STAMP=$VENV/.tapstream-pyproject.sha256
LOG=$(mktemp -t tapstream-bootstrap.XXXXXX)
trap 'rm -f "$LOG"' EXIT

say() { echo "bootstrap: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Run a command quietly; on failure show the end of its output.
run() {
    if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; return 0; fi
    if [ "$VERBOSE" = 1 ]; then "$@"; return; fi
    if ! "$@" >"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "failed: $*"
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then run "$@"
    elif command -v sudo >/dev/null 2>&1; then run sudo "$@"
    else die "need root or sudo to run: $*"
    fi
}

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

java_major() {
    command -v java >/dev/null 2>&1 || { echo 0; return; }
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

have_python311() {
    command -v python3.11 >/dev/null 2>&1 && python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1
}

packages=()
have_postgres || packages+=(postgresql)
[ "$(java_major)" -ge 17 ] 2>/dev/null || packages+=(JAVA)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
have_python311 || packages+=(python3.11 python3.11-venv)
# the monitor page's browser test (tests/integration/test_monitor_page.py) runs Debian's Chromium
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || packages+=(chromium chromium-driver)

if [ ${#packages[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${packages[*]} and no apt-get: install them by hand"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    for i in "${!packages[@]}"; do
        if [ "${packages[$i]}" = JAVA ]; then
            # Debian 13 and newer Ubuntus dropped 17: their default JRE (21) runs Kafka as well.
            if apt-cache show openjdk-17-jre-headless >/dev/null 2>&1; then
                packages[$i]=openjdk-17-jre-headless
            else
                packages[$i]=default-jre-headless
            fi
        fi
    done
    say "installing ${packages[*]}"
    as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

if [ "$DRY_RUN" != 1 ]; then
    have_postgres || die "PostgreSQL server binaries still missing after install"
    [ "$(java_major)" -ge 17 ] || die "java is $(java_major), Kafka needs 17+"
    have_python311 || die "python3.11 with venv is not available on this system"
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    run python3.11 -m venv "$VENV"
fi

wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ] || ! "$VENV/bin/python" -c 'import tapstream' 2>/dev/null; then
    say "installing Tapstream and its dependencies into $VENV"
    run "$VENV/bin/python" -m pip install -q -e '.[dev]'
    [ "$DRY_RUN" = 1 ] || echo "$wanted" > "$STAMP"
fi
