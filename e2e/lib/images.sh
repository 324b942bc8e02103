# shellcheck shell=bash
# Container images built on this machine, without a registry or a daemon:
# an image is a root filesystem packed as one layer into an OCI archive
# that `ctr images import` loads. No base image is pulled; what goes in comes
# from Debian packages (unpacked, not installed) and the project's binaries.
#
# Sourced by e2e/lib/nodes.sh. Archives are cached under
#   $HOSTWRIGHT_CACHE/images/<name>-<hash of inputs>.tar
# and rebuilt only when an input changes.

IMAGES_DIR="$HOSTWRIGHT_CACHE/images"

# deb_unpack DIR PACKAGE...: unpack Debian packages (downloaded into the
# cache once) into DIR, as a root filesystem's content.
deb_unpack() {
  local dir=$1 pkg deb
  shift
  mkdir -p "$IMAGES_DIR/debs"
  for pkg in "$@"; do
    deb=$(find "$IMAGES_DIR/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
    if [ -z "$deb" ]; then
      # A fresh machine may have no package lists yet: update once and retry.
      (cd "$IMAGES_DIR/debs" && apt-get download "$pkg" >/dev/null 2>&1) ||
        (apt-get update -qq >/dev/null 2>&1 && cd "$IMAGES_DIR/debs" && apt-get download "$pkg" >/dev/null 2>&1) ||
        { echo "cannot download the Debian package $pkg (apt-get download $pkg)" >&2; return 1; }
      deb=$(find "$IMAGES_DIR/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
    fi
    dpkg-deb -x "$deb" "$dir"
  done
}

# oci_archive REF ROOTFS CONFIG_JSON OUT: pack ROOTFS as the single layer of
# image REF (e.g. hostwright.local/pause:1) with the image config's
# `config` object CONFIG_JSON (Entrypoint, User, ...), into OUT.
oci_archive() {
  local ref=$1 rootfs=$2 config=$3 out=$4 work
  work=$(mktemp -d "$IMAGES_DIR/work.XXXXXX")
  (
    set -euo pipefail
    mkdir -p "$work/blobs/sha256"
    # Reproducible: fixed owner, order and times.
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
      -C "$rootfs" -cf "$work/layer.tar" .
    local layer_digest layer_size config_digest config_size manifest_digest manifest_size
    layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    layer_size=$(stat -c %s "$work/layer.tar")
    mv "$work/layer.tar" "$work/blobs/sha256/$layer_digest"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
      "$config" "$layer_digest" >"$work/config.json"
    config_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    config_size=$(stat -c %s "$work/config.json")
    mv "$work/config.json" "$work/blobs/sha256/$config_digest"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
      "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
    manifest_digest=$(sha256sum "$work/manifest.json" | cut -d' ' -f1)
    manifest_size=$(stat -c %s "$work/manifest.json")
    mv "$work/manifest.json" "$work/blobs/sha256/$manifest_digest"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
      "$manifest_digest" "$manifest_size" "$ref" "${ref##*:}" >"$work/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
      -C "$work" -cf "$out.tmp" oci-layout index.json blobs
    mv "$out.tmp" "$out"
  )
  local rc=$?
  rm -rf "$work"
  return $rc
}

# new_rootfs NAME: an empty directory to build image NAME's root filesystem
# in; older archives of NAME (other inputs) are removed from the cache.
new_rootfs() {
  mkdir -p "$IMAGES_DIR"
  find "$IMAGES_DIR" -maxdepth 1 -name "$1-*.tar" -delete
  mktemp -d "$IMAGES_DIR/rootfs.XXXXXX"
}

# busybox_image NAME REF CONFIG_JSON [APPLET...]: an image of Debian's static
# busybox, with a link per APPLET in /bin and a world-writable /tmp; a
# function NAME_rootfs, if there is one, adds to the root filesystem (given
# its path). Prints the archive's path.
busybox_image() {
  local name=$1 ref=$2 config=$3 key out rootfs applet rc hook="${1//-/_}_rootfs"
  shift 3
  declare -F "$hook" >/dev/null || hook=""
  key=$(printf '%s %s %s %s' "$ref" "$config" "$*" "$(declare -f oci_archive busybox_image $hook)" |
    sha256sum | cut -c1-12)
  out="$IMAGES_DIR/$name-$key.tar"
  if [ ! -f "$out" ]; then
    rootfs=$(new_rootfs "$name")
    deb_unpack "$rootfs/.deb" busybox-static || { rm -rf "$rootfs"; return 1; }
    mkdir -p "$rootfs/bin" "$rootfs/tmp"
    chmod 1777 "$rootfs/tmp"
    cp "$rootfs/.deb/bin/busybox" "$rootfs/bin/busybox"
    rm -rf "$rootfs/.deb"
    for applet in "$@"; do ln -s busybox "$rootfs/bin/$applet"; done
    [ -z "$hook" ] || "$hook" "$rootfs"
    oci_archive "$ref" "$rootfs" "$config" "$out"
    rc=$?
    rm -rf "$rootfs"
    [ $rc -eq 0 ] || return $rc
  fi
  echo "$out"
}

# The sandbox ("pause") image: busybox sleeping as PID 1 as nobody, holding
# the pod's namespaces.
build_pause_image() {
  busybox_image pause "$PAUSE_IMAGE" \
    '{"Entrypoint":["/bin/busybox","sleep","2147483647"],"User":"65535:65535"}'
}

# A busybox image for tests (httpd, sh, wget), run as whatever user the pod says.
build_busybox_image() {
  busybox_image busybox "$BUSYBOX_IMAGE" '{"Entrypoint":["/bin/busybox"],"Env":["PATH=/bin"]}' \
    sh httpd wget nc sleep cat echo
}

# A web server image for the web tier's tests, in two versions that answer
# differently (a rollout goes from one to the other): busybox httpd on port
# 8080 serving / (which names the version) and /healthz.
web_v1_rootfs() { mkdir -p "$1/www" && echo "hostwright test site v1" >"$1/www/index.html" && echo ok >"$1/www/healthz"; }
web_v2_rootfs() { mkdir -p "$1/www" && echo "hostwright test site v2" >"$1/www/index.html" && echo ok >"$1/www/healthz"; }
build_web_images() {
  local v
  for v in 1 2; do
    busybox_image "web-v$v" "hostwright.local/web:$v" \
      '{"Entrypoint":["/bin/busybox","httpd","-f","-p","8080","-h","/www"],"User":"101:101","ExposedPorts":{"8080/tcp":{}}}' || return 1
  done
}

# build_operator_image BINARY: the operator image (the `hostwright` binary is
# also the agent) as `$OPERATOR_IMAGE`. The Dockerfile users build makes a
# static musl binary on distroless; here no base image or musl target can be
# fetched, so the image holds the binary as built for the tests, stripped,
# with the glibc libraries it links (as `ldd` lists them) at their paths, and
# runs as 65532 like the Dockerfile's. Prints the archive's path.
build_operator_image() {
  local binary=$1 key out rootfs lib rc
  [ -x "$binary" ] || { echo "no operator binary at $binary (cargo build)" >&2; return 1; }
  key=$( { sha256sum "$binary"; printf '%s' "$OPERATOR_IMAGE $(declare -f oci_archive build_operator_image)"; } |
    sha256sum | cut -c1-12)
  out="$IMAGES_DIR/hostwright-$key.tar"
  if [ ! -f "$out" ]; then
    rootfs=$(new_rootfs hostwright)
    objcopy --strip-debug "$binary" "$rootfs/hostwright"
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      mkdir -p "$rootfs$(dirname "$lib")"
      cp -L "$lib" "$rootfs$lib"
    done
    mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp"
    oci_archive "$OPERATOR_IMAGE" "$rootfs" \
      '{"Entrypoint":["/hostwright"],"Cmd":["run"],"User":"65532:65532","ExposedPorts":{"8080/tcp":{}}}' "$out"
    rc=$?
    rm -rf "$rootfs"
    [ $rc -eq 0 ] || return $rc
  fi
  echo "$out"
}
