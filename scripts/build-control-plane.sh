#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd,
# kwok and Argo Rollouts' controller from the Go module proxy and caches them
# under ~/.cache/sluice/.
# Only what is missing is built: a cache that already holds kube-apiserver keeps it.
# A lock serialises concurrent runs (two test sessions starting at once).
#
# Kubernetes' own go.mod requires its staging modules (k8s.io/api, ...) at
# v0.0.0 and replaces them with paths inside its repo, which a module consumer
# cannot see. A generated wrapper module replaces each of them with the
# published v0.Y.Z release instead.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${SLUICE_CACHE:-$HOME/.cache/sluice}
k8s_dir=$cache/kubernetes-$KUBERNETES_VERSION
etcd_dir=$cache/etcd-$ETCD_VERSION
kwok_dir=$cache/kwok-$KWOK_VERSION
argo_dir=$cache/argo-rollouts-$ARGO_ROLLOUTS_VERSION
mkdir -p "$k8s_dir" "$etcd_dir" "$kwok_dir" "$argo_dir"
# Every binary of k8s.io/kubernetes the stack runs, all from one wrapper module.
k8s_commands=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

export GOFLAGS="-mod=mod -buildvcs=false"
# The installed go unless a module needs a newer one, which is then fetched through the module proxy:
# Kubernetes 1.36 needs Go 1.26, and a Go whose go.env says GOTOOLCHAIN=local (a tarball's, a distro's)
# refused to build it ("go.mod requires go >= 1.26.0"). Argo's build names its toolchain itself.
export GOTOOLCHAIN=${SLUICE_GOTOOLCHAIN:-auto}
export CGO_ENABLED=0
ldflags="-s -w"

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

build_kubernetes() {
  local missing=() command
  for command in "${k8s_commands[@]}"; do
    [[ -x $k8s_dir/$command ]] || missing+=("$command")
  done
  if (( ${#missing[@]} == 0 )); then
    return
  fi
  local work=$cache/build/kubernetes-$KUBERNETES_VERSION
  mkdir -p "$work"
  local minor=${KUBERNETES_VERSION#v1.}
  local staging_version=v0.$minor
  log "resolving k8s.io/kubernetes@$KUBERNETES_VERSION"
  local upstream_mod
  upstream_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module sluice.local/controlplane"
    echo
    echo "go $(awk '$1=="go"{print $2; exit}' "$upstream_mod")"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    # Every k8s.io module required at v0.0.0 is a staging module.
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$upstream_mod" | sort -u |
      while read -r staged; do echo "replace $staged => $staged $staging_version"; done
  } >"$work/go.mod"
  {
    printf '//go:build tools\n\npackage controlplane\n\nimport (\n'
    for command in "${k8s_commands[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$command"; done
    printf ')\n'
  } >"$work/tools.go"
  (cd "$work" && go mod tidy -e >/dev/null 2>&1 || true)
  for command in "${missing[@]}"; do
    log "building $command $KUBERNETES_VERSION (minutes on 2 cores)"
    (cd "$work" && go build -trimpath -ldflags "$ldflags $(version_ldflags)" \
      -o "$k8s_dir/$command.tmp" "k8s.io/kubernetes/cmd/$command")
    mv "$k8s_dir/$command.tmp" "$k8s_dir/$command"
  done
}

# Without these the binaries report v0.0.0, which breaks client version skew checks.
version_ldflags() {
  local pkg
  local flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION"
    flags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build_etcd() {
  if [[ -x $etcd_dir/etcd ]]; then
    return
  fi
  local work=$cache/build/etcd-$ETCD_VERSION
  mkdir -p "$work"
  cat >"$work/go.mod" <<MOD
module sluice.local/etcd

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >"$work/tools.go" <<'GO'
//go:build tools

package etcd

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$work" && go mod tidy -e >/dev/null 2>&1 || true)
  log "building etcd $ETCD_VERSION"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$etcd_dir/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$etcd_dir/etcd.tmp" "$etcd_dir/etcd"
}

# kwok's own go.mod has no replace directives, so `go install module@version` builds
# exactly the release, with the dependency versions kwok chose.
build_kwok() {
  if [[ -x $kwok_dir/kwok ]]; then
    return
  fi
  local gobin=$cache/build/kwok-$KWOK_VERSION
  mkdir -p "$gobin"
  log "building kwok $KWOK_VERSION"
  # -mod=mod is refused with module@version; kwok's go.mod and go.sum are complete.
  GOFLAGS=-buildvcs=false GOBIN=$gobin go install -trimpath -ldflags "$ldflags" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$gobin/kwok" "$kwok_dir/kwok"
}

# Argo Rollouts' go.mod pins its own replacements (k8s.io/* at the releases it was tested with) and a
# newer Go than may be installed: the release is built in a copy of its own module, with the Go
# toolchain its go.mod asks for (fetched from the module proxy, as `go` itself does with GOTOOLCHAIN).
# Its CRDs, which the stack installs, come from the same release.
build_argo_rollouts() {
  if [[ -x $argo_dir/rollouts-controller && -s $argo_dir/crds.yaml ]]; then
    return
  fi
  local module=github.com/argoproj/argo-rollouts@$ARGO_ROLLOUTS_VERSION
  local work=$cache/build/argo-rollouts-$ARGO_ROLLOUTS_VERSION
  mkdir -p "$cache/build"
  log "resolving $module"
  local info go_version
  # Without a module around it, `go mod download` reports (and does not fetch) a release that needs a
  # newer Go; its go.mod is fetched either way and names the toolchain.
  info=$(cd "$cache/build" && GOFLAGS= go mod download -json "$module" || true)
  go_version=$(awk '$1=="go"{print $2; exit}' "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])' <<<"$info")")
  local toolchain=go$go_version
  local dir
  dir=$(cd "$cache/build" && GOFLAGS= GOTOOLCHAIN=$toolchain go mod download -json "$module" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$work"
  cp -r "$dir" "$work"
  chmod -R u+w "$work"
  log "building Argo Rollouts' controller $ARGO_ROLLOUTS_VERSION with $toolchain (minutes on 2 cores)"
  local version_flag="-X github.com/argoproj/argo-rollouts/utils/version.version=${ARGO_ROLLOUTS_VERSION#v}"
  (cd "$work" && GOTOOLCHAIN=$toolchain go build -trimpath -ldflags "$ldflags $version_flag" \
    -o "$argo_dir/rollouts-controller.tmp" ./cmd/rollouts-controller)
  for crd in "$work"/manifests/crds/*-crd.yaml; do
    printf -- '---\n'
    cat "$crd"
  done >"$argo_dir/crds.yaml.tmp"
  mv "$argo_dir/crds.yaml.tmp" "$argo_dir/crds.yaml"
  mv "$argo_dir/rollouts-controller.tmp" "$argo_dir/rollouts-controller"
  rm -rf "$work"
}

exec 9>"$cache/.build.lock"
flock 9

started=$(date +%s)
build_etcd
build_kubernetes
build_kwok
build_argo_rollouts
log "binaries ready in $(( $(date +%s) - started ))s under $cache"
echo "KUBE_APISERVER=$k8s_dir/kube-apiserver"
echo "KUBE_CONTROLLER_MANAGER=$k8s_dir/kube-controller-manager"
echo "KUBE_SCHEDULER=$k8s_dir/kube-scheduler"
echo "KUBECTL=$k8s_dir/kubectl"
echo "ETCD=$etcd_dir/etcd"
echo "KWOK=$kwok_dir/kwok"
echo "ARGO_ROLLOUTS_CONTROLLER=$argo_dir/rollouts-controller"
echo "ARGO_ROLLOUTS_CRDS=$argo_dir/crds.yaml"
