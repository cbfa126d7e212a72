#!/usr/bin/env bash
# HCS on kind with simulated accelerators, then the e2e suite. See e2e/kind/README.md.
#
#   e2e/kind/run.sh            # create cluster, build + load image, install chart, run `pytest -m e2e`
#   e2e/kind/run.sh --no-test  # everything but the tests (leaves a cluster to play with)
#   e2e/kind/run.sh --down     # delete the cluster
#
# Environment (defaults in brackets):
#   HCS_KIND_CLUSTER    cluster name [hcs]
#   HCS_KIND_NODE_IMAGE kind node image [hcs.local/kind-node:<local cluster's version>, built here by
#                       e2e/kind/build-node-image]; any kindest/node >= v1.34 also works where it can be pulled
#   HCS_KIND_IMAGE      HCS image to load [hcs.local/hcs:dev]
#   HCS_KIND_IMAGE_FROM buildah: the OCI archives of `make image` (build/images/, built when missing) [buildah]
#                       docker: `docker build` the Dockerfile (needs the python base image pullable)
#   HCS_KIND_MODE       chart mode: devicePlugin | dra | both [both]
#   HCS_KIND_PROFILES   simulated node profiles (driver/profiles/<name>.json), one per worker in order
#                       [a100-80g-nvlink-8 ascend-910b-hccs-8 mixed-a100-910b]
#   HCS_KIND_REBUILD    1: rebuild the image even if it exists [1]
#   HCS_KIND_HELM_ARGS  extra arguments for helm upgrade --install
#   PYTEST              pytest to run the suite with [.venv/bin/pytest, else pytest]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO/e2e/kind"
CLUSTER="${HCS_KIND_CLUSTER:-hcs}"
IMAGE="${HCS_KIND_IMAGE:-hcs.local/hcs:dev}"
IMAGE_FROM="${HCS_KIND_IMAGE_FROM:-buildah}"
MODE="${HCS_KIND_MODE:-both}"
PROFILES="${HCS_KIND_PROFILES:-a100-80g-nvlink-8 ascend-910b-hccs-8 mixed-a100-910b}"
CACHE="${HCS_KIND_CACHE:-$HOME/.cache/hcs/kind}"
# tools built here: kind (e2e/kind/build-node-image), kubectl + helm (the local cluster's build)
cluster_env="$(python3 "$REPO/e2e/cluster/hcs_cluster.py" env --json 2>/dev/null || echo '{}')"
cfield() { python3 -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ''))" "$cluster_env" "$1"; }
K8S_LOCAL="$(cfield k8s_version)"
export PATH="$CACHE/bin${cluster_env:+:$(cfield bin_dir)}:$PATH"
NODE_IMAGE="${HCS_KIND_NODE_IMAGE:-hcs.local/kind-node:${K8S_LOCAL:-v1.37.2}}"
REBUILD="${HCS_KIND_REBUILD:-1}"
NAMESPACE=hcs-system
SERVICE_SUBNET=10.112.0.0/16  # kind-config.yaml networking.serviceSubnet
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
    ip route del "$SERVICE_SUBNET" 2>/dev/null || true
    exit 0 ;;
  --no-test) run_tests=0 ;;
  "") ;;
  *) die "unknown argument '$1'; use --no-test or --down" ;;
esac

need python3 "install Python 3"
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "no Docker daemon answers: starting Debian's docker.io (e2e/kind/docker-up)"
    "$HERE/docker-up"
  else
    die "the Docker daemon is not reachable (docker info failed); start it (as root: e2e/kind/docker-up)"
  fi
fi
case "$NODE_IMAGE" in
  hcs.local/kind-node:*) docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || HCS_KIND_NODE_IMAGE="$NODE_IMAGE" "$HERE/build-node-image" ;;
esac
need kind "run e2e/kind/build-node-image (go install sigs.k8s.io/kind), or install kind >= 0.27"
need kubectl "run e2e/cluster/build, or install kubectl"
need helm "run e2e/cluster/build, or install helm 3"
mkdir -p /lib/modules 2>/dev/null || true  # kind bind-mounts it read-only into every node
# each node runs systemd, containerd and a kubelet, all using inotify; the default 128 instances per user
# run out ("inotify_init: too many open files", the control plane never starts)
if [ "$(sysctl -n fs.inotify.max_user_instances 2>/dev/null || echo 0)" -lt 1024 ]; then
  sysctl -qw fs.inotify.max_user_instances=8192 fs.inotify.max_user_watches=1048576 2>/dev/null \
    || log "warning: fs.inotify.max_user_instances is low and could not be raised (needs root)"
fi
case "$MODE" in devicePlugin|dra|both) ;; *) die "HCS_KIND_MODE=$MODE; use devicePlugin, dra or both" ;; esac
for p in $PROFILES; do
  [ -f "$REPO/driver/profiles/$p.json" ] || die "HCS_KIND_PROFILES: no driver/profiles/$p.json (have: $(cd "$REPO/driver/profiles" && ls *.json | sed 's/\.json//' | tr '\n' ' '))"
done

# ---- 1. cluster
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "cluster $CLUSTER exists; reusing it (delete with: $0 --down)"
else
  log "creating kind cluster $CLUSTER ($NODE_IMAGE)"
  kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$HERE/kind-config.yaml" --retain
fi
mkdir -p "$(dirname "$KUBECONFIG_FILE")"
kind get kubeconfig --name "$CLUSTER" > "$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"
# ---- 1b. pod network: kind's default CNI (kindnetd) is off (its image is not built here); every node
# gets a ptp + host-local config for its podCIDR and a route to every other node's podCIDR
mapfile -t all_nodes < <(kind get nodes --name "$CLUSTER" | sort)
for n in "${all_nodes[@]}"; do
  for _ in $(seq 1 60); do
    cidr="$(kubectl get node "$n" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)"
    [ -n "$cidr" ] && break; sleep 2
  done
  [ -n "$cidr" ] || die "node $n has no podCIDR (kube-controller-manager --allocate-node-cidrs)"
  printf '{"cniVersion":"1.0.0","name":"hcs-kind","plugins":[{"type":"ptp","ipMasq":true,"mtu":1500,"ipam":{"type":"host-local","dataDir":"/run/cni-ipam-state","routes":[{"dst":"0.0.0.0/0"}],"ranges":[[{"subnet":"%s"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}\n' "$cidr" \
    | docker exec -i "$n" sh -c 'mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-hcs-kind.conflist'
  for m in "${all_nodes[@]}"; do
    [ "$m" = "$n" ] && continue
    mcidr="$(kubectl get node "$m" -o jsonpath='{.spec.podCIDR}')"
    mip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$m")"
    [ -n "$mcidr" ] && docker exec "$n" ip route replace "$mcidr" via "$mip"
  done
done
kubectl wait --for=condition=Ready node --all --timeout=180s
# Services from the host (the e2e suite calls the allocator's leader Service, as an operator would): route
# the service range to the control-plane node, whose kube-proxy rules forward (and masquerade) it
cp_node="$(kind get nodes --name "$CLUSTER" | grep -- '-control-plane$' | head -1)"
cp_ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cp_node")"
if [ "$(id -u)" -eq 0 ]; then
  ip route replace "$SERVICE_SUBNET" via "$cp_ip"
else
  log "not root: add 'ip route replace $SERVICE_SUBNET via $cp_ip' for the suite to reach Services"
fi

server_version="$(kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
k8s_version="${server_version%%+*}"   # v1.36.1
log "Kubernetes $k8s_version"

# ---- 2. images
busybox="$(cfield bin_dir)/images/busybox.oci.tar"
if [ "$IMAGE_FROM" = docker ]; then
  if [ "$REBUILD" = 1 ] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "building $IMAGE (docker build)"
    docker build -t "$IMAGE" "$REPO"
  fi
  log "loading $IMAGE into the nodes"
  kind load docker-image "$IMAGE" --name "$CLUSTER"
else
  archives=("$REPO/build/images/hcs.oci.tar" "$REPO/build/images/kube-scheduler.oci.tar")
  if [ "$REBUILD" = 1 ] || [ ! -f "${archives[0]}" ] || [ ! -f "${archives[1]}" ]; then
    log "building the images (e2e/image/build: buildah, no Docker daemon needed)"
    HCS_IMAGE="$IMAGE" "$REPO/e2e/image/build"
  fi
  [ -f "$busybox" ] && archives+=("$busybox")  # the e2e scenarios' workload image
  for a in "${archives[@]}"; do
    log "loading ${a#$REPO/} into the nodes"
    kind load image-archive "$a" --name "$CLUSTER"
  done
fi

# ---- 3. simulated devices on the workers
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
# the simulated vendor libraries, built on this host (the same sources the image builds them from)
make -s -C "$REPO/driver" >/dev/null
cp -a "$REPO/driver/build/lib" "$workdir/lib"
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
  # the driver version file the Ascend runtime reads (the scenarios check the mount carries it)
  docker exec "$node" sh -c '[ ! -d /usr/local/Ascend/driver ] || echo Version=hcs-e2e-simulated > /usr/local/Ascend/driver/version.info'
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
  $( [ "$IMAGE_FROM" = buildah ] && echo --set scheduler.kubeScheduler.image.repository=hcs.local/kube-scheduler \
       --set scheduler.kubeScheduler.image.pullPolicy=IfNotPresent --set scheduler.replicas=2 --set webhook.replicas=2 ) \
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
