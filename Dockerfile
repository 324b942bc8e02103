# syntax=docker/dockerfile:1
# The Hostwright operator image: two static binaries on distroless, run as
# non-root (uid/gid 65532), so the operator's pod meets the `restricted` Pod
# Security profile. /hostwright is the operator; /hostwright-agent is the
# in-pod agent that member pods install (`hostwright agent …` runs it), a
# binary of its own so that the operator does not map its code.
#
#   docker build -t ghcr.io/hostwright/hostwright:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts.

# ---- build: statically linked binaries for x86_64 Linux (musl) ----
FROM rust:1-bookworm AS build
# musl-tools provides musl-gcc, which the cc crate and jemalloc's build use for
# C code (ring; jemalloc, the operator's allocator).
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The registry and target caches persist between builds; the binaries are
# copied out of the cache mount so the next stage can take them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin hostwright --bin hostwright-agent \
      --target x86_64-unknown-linux-musl \
 && install -D -m 0755 -t /out target/x86_64-unknown-linux-musl/release/hostwright \
      target/x86_64-unknown-linux-musl/release/hostwright-agent

# ---- runtime: no shell, no package manager, non-root ----
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hostwright" \
      org.opencontainers.image.description="Kubernetes operator for highly available web hosting (WebCluster, SessionStore, DatabaseMirror)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/hostwright/hostwright" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/hostwright /hostwright
COPY --from=build /out/hostwright-agent /hostwright-agent
USER 65532:65532
# /metrics, /healthz and /readyz (`--metrics-addr`, see the Helm chart).
EXPOSE 8080
ENTRYPOINT ["/hostwright"]
CMD ["run"]
