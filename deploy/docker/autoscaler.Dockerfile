# syntax=docker/dockerfile:1

# autoscaler: scaling policy and drivers; reads statistics from the scheduler and gateways.
#
# Build from the repository root (the build context must be the root, where go.work is):
#   docker build -f deploy/docker/autoscaler.Dockerfile -t agentserver/autoscaler .
#
# The image holds only the autoscaler binary: a driver that shells out (the `docker compose
# --scale` driver, the command hook) needs its tools and, for Compose, the Docker socket, which
# this image deliberately lacks. Run such drivers from a host install or an image derived from
# this one.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
# go refuses a workspace whose go.work names a module it cannot find, so every module listed in
# go.work contributes its go.mod/go.sum even when this binary does not import it. The go.* glob
# keeps working for modules that have no go.sum yet. deploy/validate_test.go checks this list
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

# distroless/static has no shell, so no HEALTHCHECK here.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="agentserver-autoscaler" \
      org.opencontainers.image.description="agentserver autoscaler"
COPY --from=build /out/autoscaler /usr/local/bin/autoscaler
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/autoscaler"]
