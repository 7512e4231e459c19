#!/usr/bin/env bash
# validate-deploy.sh — renders every Kubernetes kustomization under deploy/k8s (base and
# overlays) with `kubectl kustomize` and validates each object against the Kubernetes OpenAPI
# schemas with kubernetes-validate (PyPI, installed into build-venv/deploy on first use), in
# strict mode (an unknown field fails). Also parses deploy/compose.yaml and the Grafana dashboard.
# Not part of CI (it needs kubectl and PyPI).
#
#   scripts/validate-deploy.sh [--kubernetes-version 1.30]
#
# Exit status 0 when everything validates, 1 otherwise, 2 when a tool is missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version=1.30
while [[ $# -gt 0 ]]; do
  case "$1" in
    --kubernetes-version) version="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "validate-deploy.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
command -v kubectl > /dev/null || { echo "validate-deploy.sh: kubectl is needed (kustomize)" >&2; exit 2; }
venv="$repo/build-venv/deploy"
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate pyyaml
fi
out="$(mktemp -d /tmp/fedlora-validate-deploy.XXXXXX)"
status=0
while IFS= read -r kustomization; do
  dir="$(dirname "$kustomization")"
  name="${dir#"$repo/"}"
  rendered="$out/$(echo "$name" | tr / -).yaml"
  if ! kubectl kustomize "$dir" > "$rendered" 2> "$out/err"; then
    echo "FAIL $name: kustomize: $(cat "$out/err")"; status=1; continue
  fi
  objects="$(grep -c '^kind:' "$rendered")"
  if "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" "$rendered" \
       > "$out/validate" 2>&1; then
    echo "ok   $name: $objects objects valid against Kubernetes $version (strict)"
  else
    echo "FAIL $name:"; sed 's/^/     /' "$out/validate"; status=1
  fi
done < <(find "$repo/deploy/k8s" -name kustomization.yaml | sort)
"$venv/bin/python" - "$repo" <<'PY' || status=1
import json, sys, yaml
repo = sys.argv[1]
compose = yaml.safe_load(open(f"{repo}/deploy/compose.yaml"))
services = compose["services"]
assert {"coordinator", "client-1", "client-2", "client-3"} <= set(services), services.keys()
for name, s in services.items():
    assert "image" in s, f"compose service {name} has no image"
dashboard = json.load(open(f"{repo}/deploy/grafana/fedlora.json"))
print(f"ok   deploy/compose.yaml: {len(services)} services; deploy/grafana/fedlora.json: "
      f"{len(dashboard['panels'])} panels")
PY
rm -rf "$out"
exit "$status"
