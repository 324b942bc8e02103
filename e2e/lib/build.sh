# shellcheck shell=bash
# Builds the real Kubernetes components of the local control plane from the Go
# module proxy, once per pinned version, into a cache outside the repository.
#
# Sourced by e2e/cluster. Every binary lands in
#   $HOSTWRIGHT_CACHE/bin/<component>-<version>/
# and is rebuilt only when that directory is missing, i.e. when a pin in
# e2e/versions.env changes (or the cache is wiped).

: "${HOSTWRIGHT_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/hostwright}"
# Kubernetes links are memory hungry; two parallel compiles fit in 24 GiB.
: "${HOSTWRIGHT_GO_PARALLEL:=2}"
# Parallel jobs of the one cargo build here (the S3 server's).
: "${HOSTWRIGHT_CARGO_JOBS:=2}"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

bin_dir() { echo "$HOSTWRIGHT_CACHE/bin/$1-$2"; }

# Our main for cert-manager's controller (see build_cert_manager).
CERT_MANAGER_MAIN="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cert-manager/main.go"

# Records peak RSS of a build step when GNU time is available.
timed() {
  local label=$1; shift
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "build $label: %e s, peak RSS %M KiB" -a -o "$HOSTWRIGHT_CACHE/build-times.log" "$@"
  else
    "$@"
  fi
}

# A throwaway wrapper module that requires k8s.io/kubernetes and points every
# k8s.io staging module at its published v0.X.Y (the replace directives in
# kubernetes' own go.mod point into its source tree and are ignored when it
# is used as a dependency).
#
# build_kubernetes_cmds OUT CMD...: build k8s.io/kubernetes/cmd/CMD for each
# CMD into the cache directory OUT (see bin_dir), unless all are there.
build_kubernetes_cmds() {
  local v=$KUBERNETES_VERSION out=$1 cmd missing=0
  shift
  for cmd in "$@"; do [ -x "$out/$cmd" ] || missing=1; done
  [ $missing -eq 0 ] && return 0
  echo ">> building Kubernetes $v ($*)"
  local staging_v="v0.${v#v1.}" work
  work=$(mktemp -d "$HOSTWRIGHT_CACHE/work-kubernetes.XXXXXX")
  (
    set -euo pipefail
    cd "$work"
    go mod init hostwright.local/e2e/kubernetes >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    [ -f "$gomod" ] || { echo "cannot read go.mod of k8s.io/kubernetes@$v" >&2; exit 1; }
    # Every `k8s.io/<x> => ./staging/src/k8s.io/<x>` becomes `=> k8s.io/<x> v0.X.Y`.
    local mod
    for mod in $(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\1#p' "$gomod"); do
      go mod edit -replace="$mod=$mod@$staging_v"
    done
    go mod edit -require="k8s.io/kubernetes@$v"
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for cmd in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
      printf ')\n'
    } >tools.go
    go mod tidy >/dev/null
    local minor=${v#v1.}; minor=${minor%%.*}
    local ldflags="-s -w"
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p "$out.tmp"
    for cmd in "$@"; do
      timed "$cmd" go build -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath -ldflags "$ldflags" \
        -o "$out.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
    rm -rf "$out" && mv "$out.tmp" "$out"
  )
  local rc=$?
  rm -rf "$work"
  return $rc
}

# The control plane and kubectl.
build_kubernetes() {
  build_kubernetes_cmds "$(bin_dir kubernetes "$KUBERNETES_VERSION")" \
    kube-apiserver kube-controller-manager kube-scheduler kubectl
}

# What a real node runs (e2e/lib/nodes.sh), from the same pinned module.
build_kubernetes_node() {
  build_kubernetes_cmds "$(bin_dir kubernetes-node "$KUBERNETES_VERSION")" kubelet kube-proxy
}

# etcd's server module carries replace directives, so `go install` refuses it;
# a wrapper module that requires it builds the same binary.
build_etcd() {
  local v=$ETCD_VERSION out
  out=$(bin_dir etcd "$v")
  [ -x "$out/etcd" ] && return 0
  echo ">> building etcd $v"
  local work
  work=$(mktemp -d "$HOSTWRIGHT_CACHE/work-etcd.XXXXXX")
  (
    set -euo pipefail
    cd "$work"
    go mod init hostwright.local/e2e/etcd >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$v"
    cat >tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
    go mod tidy >/dev/null
    mkdir -p "$out.tmp"
    timed etcd go build -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath \
      -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
    rm -rf "$out" && mv "$out.tmp" "$out"
  )
  local rc=$?
  rm -rf "$work"
  return $rc
}

# CoreDNS with only the plugins the local cluster's DNS needs (a wrapper
# module importing them registers exactly those), as the real nodes'
# cluster DNS. The full build links every plugin and their clouds' SDKs.
build_coredns() {
  local v=$COREDNS_VERSION out
  out=$(bin_dir coredns "$v")
  [ -x "$out/coredns" ] && return 0
  echo ">> building CoreDNS $v"
  local work
  work=$(mktemp -d "$HOSTWRIGHT_CACHE/work-coredns.XXXXXX")
  (
    set -euo pipefail
    cd "$work"
    go mod init hostwright.local/e2e/coredns >/dev/null 2>&1
    go mod edit -require="github.com/coredns/coredns@$v"
    cat >main.go <<'GO'
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
    go mod tidy >/dev/null
    mkdir -p "$out.tmp"
    timed coredns go build -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath -ldflags "-s -w" -o "$out.tmp/coredns" .
    rm -rf "$out" && mv "$out.tmp" "$out"
  )
  local rc=$?
  rm -rf "$work"
  return $rc
}

# kube-network-policies, the real nodes' NetworkPolicy enforcer. Its main
# package is the module's cmd/ directory, so `go install` names the binary
# "cmd"; it is renamed.
build_kube_network_policies() {
  local v=$KUBE_NETWORK_POLICIES_VERSION out
  out=$(bin_dir kube-network-policies "$v")
  [ -x "$out/kube-network-policies" ] && return 0
  echo ">> building kube-network-policies $v"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  GOBIN="$out.tmp" timed kube-network-policies go install -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath \
    -ldflags "-s -w" "sigs.k8s.io/kube-network-policies/cmd@$v" || return 1
  mv "$out.tmp/cmd" "$out.tmp/kube-network-policies" || return 1
  rm -rf "$out" && mv "$out.tmp" "$out"
}

# KWOK and helm install cleanly with `go install module@version`.
build_go_install() {
  local name=$1 v=$2 pkg=$3 ldflags=${4:-} out
  out=$(bin_dir "$name" "$v")
  [ -x "$out/$name" ] && return 0
  echo ">> building $name $v"
  mkdir -p "$out.tmp"
  GOBIN="$out.tmp" timed "$name" go install -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath \
    -ldflags "-s -w $ldflags" "$pkg@$v" || return 1
  rm -rf "$out" && mv "$out.tmp" "$out"
}

# Prometheus 3.Y.Z from its Go module (tagged v0.3YY.Z, see versions.env):
# the server and promtool, into $(bin_dir prometheus <v>). Built without the
# builtinassets tag, so the web UI's assets are left out (the UI answers
# with an error page); the API, the scrapes and the rule engine are whole.
# The version ldflags make `promtool --version` name the release. Of the
# service discoveries only Kubernetes' (and the built-in file and static
# ones) are compiled in: the cloud providers' SDKs were most of the build.
PROMETHEUS_TAGS=remove_all_sd,enable_kubernetes_sd
build_prometheus() {
  local v=$PROMETHEUS_VERSION out
  out=$(bin_dir prometheus "$v-k8s-sd")
  [ -x "$out/prometheus" ] && [ -x "$out/promtool" ] && return 0
  local minor=${v#v0.3}
  minor=${minor%%.*}
  local release="3.$((10#$minor)).${v##*.}" pkg=github.com/prometheus/common/version
  echo ">> building Prometheus $release ($v: prometheus, promtool)"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  GOBIN="$out.tmp" timed prometheus go install -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath -tags "$PROMETHEUS_TAGS" \
    -ldflags "-s -w -X $pkg.Version=$release -X $pkg.Revision=$v -X $pkg.Branch=release-3.$((10#$minor))" \
    "github.com/prometheus/prometheus/cmd/prometheus@$v" \
    "github.com/prometheus/prometheus/cmd/promtool@$v" || return 1
  rm -rf "$out" && mv "$out.tmp" "$out"
}

# The Gateway API's standard CRDs, copied once per pinned version from the
# module (through the Go module proxy) into
#   $HOSTWRIGHT_CACHE/crds/gateway-api-<version>/
# Prints that directory. Tests install them from there; they are never
# committed. The ValidatingAdmissionPolicy beside them is left out: only
# the CRDs are wanted.
fetch_gateway_api_crds() {
  local v=$GATEWAY_API_VERSION out dir
  out="$HOSTWRIGHT_CACHE/crds/gateway-api-$v"
  if [ ! -f "$out/gateway.networking.k8s.io_httproutes.yaml" ]; then
    echo ">> fetching the Gateway API $v CRDs" >&2
    dir=$(cd / && go mod download -json "sigs.k8s.io/gateway-api@$v" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
    [ -d "$dir/config/crd/standard" ] || { echo "no config/crd/standard in sigs.k8s.io/gateway-api@$v" >&2; return 1; }
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    cp "$dir"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$out.tmp/"
    rm -f "$out.tmp"/gateway.networking.k8s.io_vap_*.yaml
    chmod u+w "$out.tmp"/*.yaml
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# cert-manager's controller for the CA and SelfSigned issuers. Its own main
# package (cmd/controller) is a module the Go module proxy does not serve, so
# a main of ours (e2e/lib/cert-manager/main.go) starts the controllers of the
# root module. The cache key is the pin and a hash of that main, so an edit
# of it rebuilds; the builds of other pins or other mains are then removed
# (the disk is tight; a running cluster keeps its binary until it stops).
cert_manager_dir() {
  local hash
  hash=$(sha256sum "$CERT_MANAGER_MAIN" | cut -c1-12)
  bin_dir cert-manager "$CERT_MANAGER_VERSION-$hash"
}

build_cert_manager() {
  local v=$CERT_MANAGER_VERSION out
  out=$(cert_manager_dir)
  [ -x "$out/cert-manager-controller" ] && return 0
  echo ">> building cert-manager $v (controller: e2e/lib/cert-manager/main.go)"
  local work
  work=$(mktemp -d "$HOSTWRIGHT_CACHE/work-cert-manager.XXXXXX")
  (
    set -euo pipefail
    cd "$work"
    go mod init hostwright.local/e2e/cert-manager >/dev/null 2>&1
    go mod edit -require="github.com/cert-manager/cert-manager@$v"
    cp "$CERT_MANAGER_MAIN" .
    go mod tidy >/dev/null
    mkdir -p "$out.tmp"
    timed cert-manager-controller go build -p "$HOSTWRIGHT_GO_PARALLEL" -trimpath -ldflags "-s -w" \
      -o "$out.tmp/cert-manager-controller" .
    rm -rf "$out" && mv "$out.tmp" "$out"
  )
  local rc=$?
  rm -rf "$work"
  [ $rc -eq 0 ] || return $rc
  local old
  for old in "$HOSTWRIGHT_CACHE/bin/cert-manager-"*; do
    [ "$old" = "$out" ] || rm -rf "$old"
  done
}

# cert-manager's CRDs (cert-manager.io and acme.cert-manager.io), copied once
# per pinned version from the module's deploy/crds/ into
#   $HOSTWRIGHT_CACHE/crds/cert-manager-<version>/
# Prints that directory; e2e/cluster up applies them. Never committed. (The
# module's deploy/crds/README calls them the source of the chart's CRDs, for
# development and testing: what a test bed wants.)
fetch_cert_manager_crds() {
  local v=$CERT_MANAGER_VERSION out dir
  out="$HOSTWRIGHT_CACHE/crds/cert-manager-$v"
  if [ ! -f "$out/cert-manager.io_certificates.yaml" ]; then
    echo ">> fetching the cert-manager $v CRDs" >&2
    dir=$(cd / && go mod download -json "github.com/cert-manager/cert-manager@$v" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
    [ -f "$dir/deploy/crds/cert-manager.io_certificates.yaml" ] ||
      { echo "no deploy/crds in github.com/cert-manager/cert-manager@$v" >&2; return 1; }
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    cp "$dir"/deploy/crds/cert-manager.io_*.yaml "$dir"/deploy/crds/acme.cert-manager.io_*.yaml "$out.tmp/"
    chmod u+w "$out.tmp"/*.yaml
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# The S3 server (s3s-fs, see e2e/versions.env), from crates.io with the
# versions of its own Cargo.lock (--locked), at the lowest priority, in a
# throwaway target directory (a few hundred MB) removed afterwards. cargo
# install --root leaves bin/s3s-fs and its bookkeeping (.crates.toml,
# .crates2.json); only the binary is kept, as $(bin_dir s3s-fs <v>)/s3s-fs.
# Symbols are stripped, as -s -w does for the Go builds.
build_s3_server() {
  local v=$S3S_FS_VERSION out
  out=$(bin_dir s3s-fs "$v")
  [ -x "$out/s3s-fs" ] && return 0
  command -v cargo >/dev/null || { echo "cargo is needed to build s3s-fs (see README)" >&2; return 1; }
  echo ">> building s3s-fs $v"
  local work
  work=$(mktemp -d "$HOSTWRIGHT_CACHE/work-s3s-fs.XXXXXX")
  rm -rf "$out.tmp"
  local rc=0
  CARGO_TARGET_DIR="$work" CARGO_PROFILE_RELEASE_STRIP=symbols timed s3s-fs \
    nice -n 19 cargo install s3s-fs --version "$v" --features binary --locked \
    --jobs "$HOSTWRIGHT_CARGO_JOBS" --root "$out.tmp" --quiet || rc=$?
  if [ $rc -eq 0 ]; then
    { mv "$out.tmp/bin/s3s-fs" "$out.tmp/s3s-fs" &&
      rm -rf "$out.tmp/bin" "$out.tmp/.crates.toml" "$out.tmp/.crates2.json" &&
      rm -rf "$out" && mv "$out.tmp" "$out"; } || rc=$?
  fi
  rm -rf "$work"
  [ $rc -eq 0 ] || rm -rf "$out.tmp"
  return $rc
}

build_all() {
  mkdir -p "$HOSTWRIGHT_CACHE/bin"
  build_etcd &&
    build_go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok \
      "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" &&
    build_go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
      "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" &&
    build_prometheus &&
    build_kubernetes &&
    build_cert_manager &&
    fetch_cert_manager_crds >/dev/null &&
    build_s3_server
}

# PATH entries for every built component.
tool_path() {
  echo "$(bin_dir kubernetes "$KUBERNETES_VERSION"):$(bin_dir etcd "$ETCD_VERSION"):$(bin_dir kwok "$KWOK_VERSION"):$(bin_dir helm "$HELM_VERSION"):$(bin_dir prometheus "$PROMETHEUS_VERSION-k8s-sd")"
}
