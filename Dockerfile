# syntax=docker/dockerfile:1
#
# The `parley` image: ghcr.io/parley-chat/parley:<version>.
#
#   docker build -t ghcr.io/parley-chat/parley:0.1.0 .
#
# The build context is the repository root (the Cargo workspace). Three stages
# share one toolchain image:
#   planner  reduces the workspace to its manifests and Cargo.lock (recipe.json);
#   builder  compiles the dependencies from that recipe alone -- a layer that only
#            changes when a manifest or Cargo.lock does -- then the workspace;
#   runtime  distroless, non-root, nothing but the binary.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
# cargo-chef is compiled once and stays in this cached layer.
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Patched crates ([patch.crates-io]) are sources the recipe does not carry.
COPY vendor vendor
# Dependencies only: cached until Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin parley
COPY . .
RUN cargo build --release --locked --bin parley \
 && install -s -D -m 0755 target/release/parley /out/parley

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="parley" \
      org.opencontainers.image.description="Parley: end-to-end-encrypted chat for Kubernetes (user, chat and notification services, migrations, key tools)" \
      org.opencontainers.image.source="https://github.com/parley-chat/parley" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/parley /usr/local/bin/parley
# The binary's own default (127.0.0.1:8080) is unreachable from outside a
# container; the operator may still set PARLEY_LISTEN or --listen itself.
ENV PARLEY_LISTEN=0.0.0.0:8080
# distroless "nonroot" (uid/gid 65532); numeric so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/parley"]
