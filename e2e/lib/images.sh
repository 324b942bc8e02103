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
    # Reproducible: fixed order and times; owners as the builder set them.
    tar --sort=name --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer.tar" .
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
  local dir
  dir=$(mktemp -d "$IMAGES_DIR/rootfs.XXXXXX") && chmod 755 "$dir" && echo "$dir"
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

# A busybox image for tests (httpd, sh, wget, nc, nslookup), run as whatever
# user the pod says.
build_busybox_image() {
  busybox_image busybox "$BUSYBOX_IMAGE" '{"Entrypoint":["/bin/busybox"],"Env":["PATH=/bin"]}' \
    sh httpd wget nc nslookup sleep cat echo
}

# nginx laid out as the nginxinc/nginx-unprivileged image: Debian's nginx
# (with nginx-common's mime.types), user nginx 101:101, listening on 8080,
# its pid and temporary files in /tmp, logs to the container's output,
# pages in /usr/share/nginx/html (and /healthz answered by nginx itself).
nginx_rootfs() {
  deb_unpack "$1/.deb" nginx nginx-common || return 1
  mkdir -p "$1/usr/sbin" "$1/etc/nginx/conf.d" "$1/usr/share/nginx/html" "$1/var/log/nginx"
  cp "$1/.deb/usr/sbin/nginx" "$1/usr/sbin/nginx"
  cp "$1/.deb/etc/nginx/mime.types" "$1/etc/nginx/mime.types"
  rm -rf "$1/.deb"
  cat >"$1/etc/nginx/nginx.conf" <<'CONF'
worker_processes auto;
pid /tmp/nginx.pid;
error_log /var/log/nginx/error.log notice;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log /var/log/nginx/access.log;
  client_body_temp_path /tmp/client_temp;
  proxy_temp_path /tmp/proxy_temp;
  fastcgi_temp_path /tmp/fastcgi_temp;
  uwsgi_temp_path /tmp/uwsgi_temp;
  scgi_temp_path /tmp/scgi_temp;
  sendfile on;
  keepalive_timeout 65;
  include /etc/nginx/conf.d/*.conf;
}
CONF
  cat >"$1/etc/nginx/conf.d/default.conf" <<'CONF'
server {
  listen 8080;
  server_name localhost;
  location = /healthz { return 200 "ok\n"; }
  location / { root /usr/share/nginx/html; index index.html; }
}
CONF
  echo "<h1>Welcome to nginx (hostwright.local/nginx)</h1>" >"$1/usr/share/nginx/html/index.html"
  ln -s /dev/stdout "$1/var/log/nginx/access.log"
  ln -s /dev/stderr "$1/var/log/nginx/error.log"
  add_user "$1" nginx 101 /nonexistent
  add_libraries "$1"
}
build_nginx_image() {
  busybox_image nginx "$NGINX_IMAGE" \
    '{"Entrypoint":["/usr/sbin/nginx","-g","daemon off;"],"User":"101:101","ExposedPorts":{"8080/tcp":{}},"StopSignal":"SIGQUIT"}'
}

# binary_image NAME REF CONFIG_JSON BINARY...: an image of programs built
# here, each as `/<its file name>`, stripped, with the glibc libraries they
# link (as `ldd` lists them) at their paths and a world-writable /tmp.
# Prints the archive's path.
binary_image() {
  local name=$1 ref=$2 config=$3 binary key out rootfs rc=0
  shift 3
  for binary in "$@"; do
    [ -x "$binary" ] || { echo "no binary at $binary (cargo build)" >&2; return 1; }
  done
  key=$( { sha256sum "$@"; printf '%s' "$ref $config $(declare -f oci_archive binary_image add_libraries)"; } |
    sha256sum | cut -c1-12)
  out="$IMAGES_DIR/$name-$key.tar"
  if [ ! -f "$out" ]; then
    rootfs=$(new_rootfs "$name")
    for binary in "$@"; do
      objcopy --strip-debug "$binary" "$rootfs/$(basename "$binary")" || rc=1
    done
    [ $rc -eq 0 ] && add_libraries "$rootfs" &&
      mkdir -p "$rootfs/tmp" && chmod 1777 "$rootfs/tmp" &&
      oci_archive "$ref" "$rootfs" "$config" "$out"
    rc=$?
    rm -rf "$rootfs"
    [ $rc -eq 0 ] || return $rc
  fi
  echo "$out"
}

# build_operator_image BINARY: the operator image as `$OPERATOR_IMAGE`, with
# BINARY (`hostwright`) and the agent binary built beside it
# (`hostwright-agent`, which member pods install): two binaries, so that the
# operator does not map the agent's code. The Dockerfile users build makes
# static musl binaries on distroless; here no base image or musl target can
# be fetched, so the image holds the binaries as built for the tests,
# stripped, with their glibc libraries, and runs as 65532 like the
# Dockerfile's.
build_operator_image() {
  local agent
  agent="$(dirname "$1")/hostwright-agent"
  [ -x "$agent" ] ||
    { echo "no agent binary beside $1 ($agent): cargo build --package hostwright --bins" >&2; return 1; }
  binary_image hostwright "$OPERATOR_IMAGE" \
    '{"Entrypoint":["/hostwright"],"Cmd":["run"],"User":"65532:65532","ExposedPorts":{"8080/tcp":{}}}' \
    "$1" "$agent"
}

# build_site_images BINARY: the demo site (`demo-site`) as
# hostwright.local/site:1 and :2, which differ only in the version their
# pages show (a rollout goes from one to the other). Prints both archives.
build_site_images() {
  local v
  for v in 1 2; do
    binary_image "site-v$v" "$SITE_IMAGE:$v" \
      "{\"Entrypoint\":[\"/demo-site\"],\"Env\":[\"SITE_VERSION=$v\",\"PORT=8080\"],\"User\":\"65532:65532\",\"ExposedPorts\":{\"8080/tcp\":{}}}" \
      "$1" || return 1
  done
}

# copy_host_files ROOTFS PATH...: copy files and directories of this machine
# into ROOTFS at the same paths.
copy_host_files() {
  local rootfs=$1 path
  shift
  for path in "$@"; do
    mkdir -p "$rootfs$(dirname "$path")"
    cp -a "$path" "$rootfs$(dirname "$path")/"
  done
}

# add_libraries ROOTFS: copy in every shared library an ELF file in ROOTFS
# links (as `ldd` lists them), so its programs run inside the image.
add_libraries() {
  local rootfs=$1 lib
  # ldd's lines for a library: "\tname => /path (addr)" or "\t/path (addr)".
  for lib in $(find "$rootfs" -type f \( -perm -u+x -o -name '*.so*' \) -exec ldd {} + 2>/dev/null |
    awk '/^\t/ { if ($2 == "=>" && $3 ~ /^\//) print $3; else if ($1 ~ /^\//) print $1 }' | sort -u); do
    [ -e "$rootfs$lib" ] && continue
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L --remove-destination "$lib" "$rootfs$lib"
  done
}

# add_user ROOTFS NAME UID HOME: /etc/passwd and /etc/group with root and one
# service user (initdb refuses to run as a uid without a name).
add_user() {
  mkdir -p "$1/etc"
  printf 'root:x:0:0:root:/root:/bin/sh\n%s:x:%s:%s::%s:/bin/sh\n' "$2" "$3" "$3" "$4" >"$1/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$2" "$3" >"$1/etc/group"
}

# store_image NAME REF CONFIG_JSON PACKAGES: an image whose root filesystem
# NAME_rootfs fills from this machine's installed PACKAGES (their versions
# are part of the cache key) plus busybox as /bin/sh. Prints the archive.
store_image() {
  local name=$1 ref=$2 config=$3 packages=$4 key out rootfs rc lib hook="${1//-/_}_rootfs"
  # shellcheck disable=SC2086
  key=$(printf '%s %s %s %s' "$ref" "$config" "$(dpkg-query -W $packages)" \
    "$(declare -f oci_archive store_image copy_host_files add_libraries add_user "$hook")" | sha256sum | cut -c1-12)
  out="$IMAGES_DIR/$name-$key.tar"
  if [ ! -f "$out" ]; then
    rootfs=$(new_rootfs "$name")
    (
      set -euo pipefail
      deb_unpack "$rootfs/.deb" busybox-static
      mkdir -p "$rootfs/bin" "$rootfs/tmp"
      chmod 1777 "$rootfs/tmp"
      cp "$rootfs/.deb/bin/busybox" "$rootfs/bin/busybox"
      rm -rf "$rootfs/.deb"
      for applet in sh ls cat ps; do ln -s busybox "$rootfs/bin/$applet"; done
      "$hook" "$rootfs"
      # The C runtime every Debian-based image has (packages libc6 and
      # libgcc-s1): programs copied in later (the agent) find it too.
      for lib in /lib/x86_64-linux-gnu/libc.so.6 /lib/x86_64-linux-gnu/libm.so.6 \
        /lib/x86_64-linux-gnu/libgcc_s.so.1 /lib64/ld-linux-x86-64.so.2; do
        mkdir -p "$rootfs$(dirname "$lib")" && cp -L --remove-destination "$lib" "$rootfs$lib"
      done
      add_libraries "$rootfs"
    ) && oci_archive "$ref" "$rootfs" "$config" "$out"
    rc=$?
    rm -rf "$rootfs"
    [ $rc -eq 0 ] || return $rc
  fi
  echo "$out"
}

# PostgreSQL 15 laid out as the official `postgres:15` image: programs in
# /usr/lib/postgresql/15/bin (on PATH), user postgres 999:999, PGDATA
# /var/lib/postgresql/data (1777, as the official image leaves it), the
# socket directory /var/run/postgresql (3777), time zones in
# /usr/share/zoneinfo. Without LLVM (100 MB): the server then runs without
# JIT compilation, which it only uses for long analytic queries.
postgres_rootfs() {
  copy_host_files "$1" /usr/lib/postgresql/15 /usr/share/postgresql/15 /usr/share/zoneinfo
  rm -rf "$1/usr/lib/postgresql/15/lib/llvmjit"* "$1/usr/lib/postgresql/15/lib/bitcode"
  add_user "$1" postgres 999 /var/lib/postgresql
  mkdir -p "$1/var/lib/postgresql/data" "$1/var/run/postgresql"
  chown -R 999:999 "$1/var/lib/postgresql" "$1/var/run/postgresql"
  chmod 1777 "$1/var/lib/postgresql/data"
  chmod 3777 "$1/var/run/postgresql"
}
build_postgres_image() {
  store_image postgres "$POSTGRES_IMAGE" \
    '{"Entrypoint":["postgres"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin","PGDATA=/var/lib/postgresql/data","PG_MAJOR=15"],"User":"999:999","ExposedPorts":{"5432/tcp":{}},"StopSignal":"SIGINT"}' \
    postgresql-15
}

# Redis 7 laid out as the official `redis:7` image: /usr/local/bin/redis-server
# (and redis-cli), user redis 999:999, working directory /data owned by it.
redis_rootfs() {
  mkdir -p "$1/usr/local/bin"
  cp /usr/bin/redis-server "$1/usr/local/bin/redis-server"
  cp /usr/bin/redis-cli "$1/usr/local/bin/redis-cli"
  add_user "$1" redis 999 /home/redis
  mkdir -p "$1/data"
  chown 999:999 "$1/data"
}
build_redis_image() {
  store_image redis "$REDIS_IMAGE" \
    '{"Entrypoint":["redis-server"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"User":"999:999","WorkingDir":"/data","ExposedPorts":{"6379/tcp":{}}}' \
    "redis-server redis-tools"
}
