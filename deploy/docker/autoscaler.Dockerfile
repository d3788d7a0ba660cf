# syntax=docker/dockerfile:1

# autoscaler: scaling policy, decisions and drivers; reads statistics from the schedulers (and
# gateways). `autoscaler run` serves /healthz, /metrics and /v1/decisions on :8095.
#
# Build from the repository root (the build context must be the root, where go.work is):
#   docker build -f deploy/docker/autoscaler.Dockerfile -t agentserver/autoscaler .
#   docker build -f deploy/docker/autoscaler.Dockerfile --target compose -t agentserver/autoscaler:compose .
#
# Two images. The default (last stage) is distroless and holds only the binary: `simulate`,
# and `run` with a driver whose tools a derived image adds (kubectl for a command driver, for
# example). The "compose" target adds the Docker CLI with its Compose plugin for the compose
# driver (`docker compose up --scale`); it needs the Docker socket, which docker-compose.yml
# mounts in its opt-in autoscale profile.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# go refuses a workspace whose go.work names a module it cannot find, so every module listed in
# go.work contributes its go.mod/go.sum even when this binary does not import it. The go.* glob
# keeps working for modules that have no go.sum yet. deploy/dockerfile_test.go checks this list
# against go.work.
COPY go.work go.work.sum ./
COPY gen/go.* gen/
COPY pkg/go.* pkg/
COPY services/agentctl/go.* services/agentctl/
COPY services/agentserver/go.* services/agentserver/
COPY services/autoscaler/go.* services/autoscaler/
COPY services/gateway/go.* services/gateway/
COPY services/scheduler/go.* services/scheduler/
COPY services/worker-agent/go.* services/worker-agent/
COPY tools/go.* tools/
COPY gen/ gen/
COPY pkg/ pkg/
COPY services/autoscaler/ services/autoscaler/
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/autoscaler ./services/autoscaler/cmd/autoscaler

# The compose driver's image: the docker CLI and Compose plugin of the official docker:cli
# image. It runs as root: it drives the host's Docker through its socket, which is root on
# the host whatever the user in here, and the socket's group differs from host to host.
FROM docker:28-cli AS compose
LABEL org.opencontainers.image.title="agentserver-autoscaler-compose" \
      org.opencontainers.image.description="agentserver autoscaler with the Docker CLI, for the compose driver"
COPY --from=build /out/autoscaler /usr/local/bin/autoscaler
EXPOSE 8095
USER 0:0
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8095/healthz"]
ENTRYPOINT ["/usr/local/bin/autoscaler"]
CMD ["run"]

# The default image. distroless/static has no shell, so no HEALTHCHECK here: probe GET
# /healthz on :8095 from the orchestrator.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="agentserver-autoscaler" \
      org.opencontainers.image.description="agentserver autoscaler"
COPY --from=build /out/autoscaler /usr/local/bin/autoscaler
EXPOSE 8095
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/autoscaler"]
CMD ["run"]
