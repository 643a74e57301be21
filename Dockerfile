# mcp-sidecar container image: one static binary on `scratch`, running as uid/gid 65532.
#
#   docker build -t mcp-sidecar .
#
# builds the binary and its SBOM from source (stage `build`, with .ci/release-build), for the
# platform asked for: `docker buildx build --platform linux/amd64,linux/arm64` builds both on
# one machine (the build stage runs natively and cross-compiles). Machines that cannot pull
# `rust:` can build the same final image from files built on the host with
# `bash .ci/release-build x86_64` (or aarch64, or both), which writes target/dist/linux-amd64
# (linux-arm64):
#
#   docker build --build-arg BINARY_SOURCE=prebuilt -t mcp-sidecar .
#
# (PREBUILT_DIR overrides that directory inside the build context.) There is no `# syntax=`
# line on purpose: it would make BuildKit pull a frontend image even for that build.
#
# Run it with the upstream's URL and credential, e.g.
#
#   docker run --read-only -e MCP_SIDECAR_UPSTREAM_URL=https://mcp.example.com/mcp \
#     -e MCP_SIDECAR_TOKEN_FILE=/run/secrets/mcp_token -e MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true \
#     -v "$PWD/mcp_token:/run/secrets/mcp_token:ro" mcp-sidecar
#
# The image listens on 0.0.0.0:4510 so that other containers can reach it. The sidecar refuses to
# start on a non-loopback address until you decide who may use its credential: set
# MCP_SIDECAR_ALLOW_REMOTE_CLIENTS=true when only trusted containers reach the port (a compose
# network without published ports), or MCP_SIDECAR_CLIENT_TOKEN(_FILE) to require a shared secret.
# Clients that connect by a name (http://mcp-sidecar:4510) also need that name in
# MCP_SIDECAR_ALLOWED_HOSTS. In a Kubernetes pod the agent shares the network namespace: there,
# set MCP_SIDECAR_LISTEN=127.0.0.1:4510 and nothing else can reach the port (see k8s/).

# `build` (compile from source, the default) or `prebuilt` (copy PREBUILT_BINARY).
ARG BINARY_SOURCE=build

# ---- build: a statically linked musl binary and its CycloneDX SBOM ----------------------------
# On the build machine's own platform; .ci/release-build cross-compiles for TARGETARCH (set by
# `--platform`). It installs the musl target, the C compiler `ring` needs (musl-gcc, or Debian's
# aarch64 cross gcc) and the pinned cargo-cyclonedx; the Debian release is pinned by the base tag.
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
ARG TARGETARCH
WORKDIR /src
COPY .ci/release-build .ci/
RUN bash .ci/release-build --tools-only "${TARGETARCH:-$(uname -m)}"
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
RUN bash .ci/release-build --out /out "${TARGETARCH:-$(uname -m)}"

# ---- prebuilt: the same layout from files built outside (no compiler, no base image) ---------
FROM scratch AS prebuilt
# amd64 when the builder does not set it (podman without --platform)
ARG TARGETARCH=amd64
ARG PREBUILT_DIR=target/dist/linux-${TARGETARCH}
COPY ${PREBUILT_DIR}/mcp-sidecar ${PREBUILT_DIR}/mcp-sidecar.cdx.json /out/

# ---- empty: an empty tree, the source of the state directory below (scratch has no mkdir) ----
FROM scratch AS empty

# ---- the final image ---------------------------------------------------------------------------
# hadolint ignore=DL3006
FROM ${BINARY_SOURCE} AS binary

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mcp-sidecar" \
      org.opencontainers.image.description="Holds OAuth credentials for an AI agent and proxies MCP to the remote server with a fresh token" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="scratch" \
      io.github.mcp-sidecar.sbom="/mcp-sidecar.cdx.json" \
      io.github.mcp-sidecar.sbom.format="CycloneDX 1.5 JSON"
# Nothing but the binary: TLS trust roots (webpki) are compiled in; MCP_SIDECAR_CA_FILE adds a
# PEM bundle for corporate TLS proxies (mount it and point the variable at it).
COPY --from=binary --chmod=0555 /out/mcp-sidecar /mcp-sidecar
# The SBOM of the crates compiled into it (the label above names it), also a release file.
COPY --from=binary --chmod=0444 /out/mcp-sidecar.cdx.json /mcp-sidecar.cdx.json
# The state directory (tokens obtained by login are kept here). Mount a volume on it to keep them
# across restarts; without a writable state dir the sidecar keeps tokens in memory only. It is
# owned by the runtime user (first /var/lib as root, so that only the state dir is the user's).
# (podman 4.3's buildah ignores --chmod on directories and leaves this one 0755.)
COPY --from=empty / /var/lib/
COPY --from=empty --chown=65532:65532 --chmod=0700 / /var/lib/mcp-sidecar/
# Not root; the conventional "nonroot" ids of distroless images, so volumes work alike.
USER 65532:65532
ENV MCP_SIDECAR_LISTEN=0.0.0.0:4510
EXPOSE 4510
# `probe` asks the local /ready (address from MCP_SIDECAR_LISTEN) and exits 0 on 200: a scratch
# image has no curl. Healthy means an MCP handshake with the upstream succeeded, so dependants
# (compose `condition: service_healthy`) start only when tools are really reachable.
HEALTHCHECK --interval=5s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/mcp-sidecar", "probe"]
ENTRYPOINT ["/mcp-sidecar"]
CMD ["serve"]
