#!/usr/bin/env bash
# HCS on kind with simulated accelerators, then the e2e suite. See e2e/kind/README.md.
#
#   e2e/kind/run.sh            # create cluster, build + load image, install chart, run `pytest -m e2e`
#   e2e/kind/run.sh --no-test  # everything but the tests (leaves a cluster to play with)
#   e2e/kind/run.sh --down     # delete the cluster
#
# Environment (defaults in brackets):
#   HCS_KIND_CLUSTER    cluster name [hcs]
#   HCS_KIND_NODE_IMAGE kind node image [kindest/node:v1.36.1]; Kubernetes >= 1.34
#   HCS_KIND_IMAGE      HCS image to build and load [hcs.local/hcs:dev]
#   HCS_KIND_MODE       chart mode: devicePlugin | dra | both [both]
#   HCS_KIND_PROFILES   simulated node profiles (driver/profiles/<name>.json), one per worker in order
#                       [a100-80g-nvlink-8 ascend-910b-hccs-8]
#   HCS_KIND_REBUILD    1: rebuild the image even if it exists [1]
#   HCS_KIND_HELM_ARGS  extra arguments for helm upgrade --install
#   PYTEST              pytest to run the suite with [.venv/bin/pytest, else pytest]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/e2e/kind"
CLUSTER="${HCS_KIND_CLUSTER:-hcs}"
NODE_IMAGE="${HCS_KIND_NODE_IMAGE:-kindest/node:v1.36.1}"
IMAGE="${HCS_KIND_IMAGE:-hcs.local/hcs:dev}"
MODE="${HCS_KIND_MODE:-both}"
PROFILES="${HCS_KIND_PROFILES:-a100-80g-nvlink-8 ascend-910b-hccs-8}"
REBUILD="${HCS_KIND_REBUILD:-1}"
NAMESPACE=hcs-system
SIM_DIR=/opt/hcs/sim
LIB_DIR=/opt/hcs/driver/lib
KUBECONFIG_FILE="${HCS_KIND_KUBECONFIG:-$HOME/.kube/kind-$CLUSTER}"

log() { printf '\033[1m[hcs-kind]\033[0m %s\n' "$*" >&2; }
die() { printf '[hcs-kind] error: %s\n' "$*" >&2; exit 1; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; $2"
}

run_tests=1
case "${1:-}" in
  --down)
    need kind "install kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
    kind delete cluster --name "$CLUSTER"
    exit 0 ;;
  --no-test) run_tests=0 ;;
  "") ;;
  *) die "unknown argument '$1'; use --no-test or --down" ;;
esac

need docker "install Docker (or Podman with KIND_EXPERIMENTAL_PROVIDER=podman)"
need kind "install kind >= 0.27: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "install kubectl: https://kubernetes.io/docs/tasks/tools/"
need helm "install helm 3: https://helm.sh/docs/intro/install/"
need python3 "install Python 3"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (docker info failed); start it or fix permissions"
case "$MODE" in devicePlugin|dra|both) ;; *) die "HCS_KIND_MODE=$MODE; use devicePlugin, dra or both" ;; esac
for p in $PROFILES; do
  [ -f "$REPO/driver/profiles/$p.json" ] || die "HCS_KIND_PROFILES: no driver/profiles/$p.json (have: $(cd "$REPO/driver/profiles" && ls *.json | sed 's/\.json//' | tr '\n' ' '))"
done

# ---- 1. cluster
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "cluster $CLUSTER exists; reusing it (delete with: $0 --down)"
else
  log "creating kind cluster $CLUSTER ($NODE_IMAGE)"
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$HERE/kind-config.yaml" --wait 180s
fi
mkdir -p "$(dirname "$KUBECONFIG_FILE")"
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"
server_version="$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
k8s_version="${server_version%%+*}"   # v1.36.1
log "Kubernetes $k8s_version"

# ---- 2. image
if [ "$REBUILD" = 1 ] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "building $IMAGE"
  docker build -t "$IMAGE" "$REPO"
fi
log "loading $IMAGE into the nodes"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# ---- 3. simulated devices on the workers
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
cid="$(docker create "$IMAGE")"
docker cp "$cid:$LIB_DIR" "$workdir/lib" >/dev/null
docker rm "$cid" >/dev/null
mapfile -t workers < <(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
read -r -a profiles <<< "$PROFILES"
[ "${#workers[@]}" -ge "${#profiles[@]}" ] || die "${#profiles[@]} profiles for ${#workers[@]} workers; add workers in kind-config.yaml or shorten HCS_KIND_PROFILES"
for i in "${!profiles[@]}"; do
  node="${workers[$i]}"
  profile="$REPO/driver/profiles/${profiles[$i]}.json"
  log "node $node: simulated devices from ${profiles[$i]}"
  docker exec "$node" mkdir -p "$SIM_DIR" "$LIB_DIR"
  docker cp "$workdir/lib/." "$node:$LIB_DIR/"
  docker cp "$profile" "$node:$SIM_DIR/profile.json"
  python3 "$HERE/sim_devices.py" "$profile" --lib-dir "$LIB_DIR" --sim-dir "$SIM_DIR" | docker exec -i "$node" sh
  kubectl label node "$node" hcs.io/accelerator=true "hcs.io/sim-profile=${profiles[$i]}" --overwrite >/dev/null
done

# ---- 4. chart
log "installing the chart (mode $MODE)"
# shellcheck disable=SC2086
helm upgrade --install hcs "$REPO/helm/hcs" --namespace "$NAMESPACE" --create-namespace \
  -f "$REPO/helm/hcs/values-dev.yaml" \
  --set mode="$MODE" \
  --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=IfNotPresent \
  --set nodeAgent.simulated.enabled=true --set nodeAgent.simulated.hostDir="$SIM_DIR" \
  --set-string nodeAgent.nodeSelector.hcs\\.io/accelerator=true \
  --set scheduler.kubeScheduler.image.tag="$k8s_version" \
  --wait --timeout 10m ${HCS_KIND_HELM_ARGS:-}

log "waiting for a ComputeNode per simulated node"
for i in "${!profiles[@]}"; do
  node="${workers[$i]}"
  for _ in $(seq 1 60); do
    kubectl get computenode "$node" >/dev/null 2>&1 && break
    sleep 2
  done
  kubectl get computenode "$node" >/dev/null 2>&1 || {
    kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/component=node-agent --tail=50 --prefix || true
    die "no ComputeNode for $node after 120 s (node agent logs above)"
  }
done
kubectl get computenodes
[ "$MODE" = devicePlugin ] || kubectl get resourceslices

# ---- 5. e2e suite
if [ "$run_tests" = 1 ]; then
  PYTEST="${PYTEST:-}"
  if [ -z "$PYTEST" ]; then
    if [ -x "$REPO/.venv/bin/pytest" ]; then PYTEST="$REPO/.venv/bin/pytest"; else PYTEST=pytest; fi
  fi
  log "running the e2e suite against kind ($PYTEST -m e2e)"
  cd "$REPO"
  HCS_E2E_TARGET=kind HCS_E2E_KUBECONFIG="$KUBECONFIG" HCS_E2E_NAMESPACE="$NAMESPACE" HCS_E2E_IMAGE="$IMAGE" \
  HCS_E2E_NODES="${workers[*]:0:${#profiles[@]}}" HCS_E2E_PROFILES="$PROFILES" HCS_E2E_SIM_DIR="$SIM_DIR" \
    "$PYTEST" -m e2e -q
fi
log "done. KUBECONFIG=$KUBECONFIG; delete the cluster with: $0 --down"
