# syntax=docker/dockerfile:1
# pie's container images, one file with two targets (`task image` builds both):
#   docker build --target controller -t ghcr.io/pie-rs/pie-controller:0.1.0 .
#   docker build --target agent      -t ghcr.io/pie-rs/pie-agent:0.1.0 .
# Both binaries are built once in the shared builder stage.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pie-controller --bin pie-agent \
 && install -D -m 0755 target/release/pie-controller /out/pie-controller \
 && install -D -m 0755 target/release/pie-agent /out/pie-agent

# pie-controller: glibc, CA certificates and nothing else (no shell, no package manager);
# runs as 65532 (nonroot), as deploy/base/deployment.yaml expects.
FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=builder /out/pie-controller /usr/local/bin/pie-controller
# Two glibc malloc arenas instead of eight per core: memory freed on one tokio worker is
# reused by the others rather than kept resident per arena (docs/benchmarks.md, "Size").
ENV MALLOC_ARENA_MAX=2
USER 65532:65532
EXPOSE 8080 8081 8082
ENTRYPOINT ["/usr/local/bin/pie-controller"]
CMD ["run"]

# pie-agent: runs fio in probe Pods, as uid/gid 1001 like the probe Pod's securityContext
# (pie's uid, so PVCs written by topolvm/pie's probes stay writable).
FROM debian:bookworm-slim AS agent
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fio ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1001 pie \
 && useradd --uid 1001 --gid 1001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pie
COPY --from=builder /out/pie-agent /usr/local/bin/pie-agent
USER 1001:1001
ENTRYPOINT ["/usr/local/bin/pie-agent"]
