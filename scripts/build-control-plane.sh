#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go module proxy and caches
# them under ~/.cache/sluice/. Nothing is built when the binaries are present.
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
mkdir -p "$k8s_dir" "$etcd_dir"

export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
ldflags="-s -w"

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

build_kubernetes() {
  if [[ -x $k8s_dir/kube-apiserver && -x $k8s_dir/kubectl ]]; then
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
  cat >"$work/tools.go" <<'GO'
//go:build tools

package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$work" && go mod tidy -e >/dev/null 2>&1 || true)
  log "building kube-apiserver $KUBERNETES_VERSION (several minutes on 2 cores)"
  (cd "$work" && go build -trimpath -ldflags "$ldflags $(version_ldflags)" -o "$k8s_dir/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
  log "building kubectl $KUBERNETES_VERSION"
  (cd "$work" && go build -trimpath -ldflags "$ldflags $(version_ldflags)" -o "$k8s_dir/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl)
  mv "$k8s_dir/kube-apiserver.tmp" "$k8s_dir/kube-apiserver"
  mv "$k8s_dir/kubectl.tmp" "$k8s_dir/kubectl"
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

started=$(date +%s)
build_etcd
build_kubernetes
log "binaries ready in $(( $(date +%s) - started ))s under $cache"
echo "KUBE_APISERVER=$k8s_dir/kube-apiserver"
echo "KUBECTL=$k8s_dir/kubectl"
echo "ETCD=$etcd_dir/etcd"
