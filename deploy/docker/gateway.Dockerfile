# syntax=docker/dockerfile:1

# gateway: the public API, REST on :8080 (with GET /healthz) and gRPC on :9090.
#
# Build from the repository root (the build context must be the root, where go.work is):
#   docker build -f deploy/docker/gateway.Dockerfile -t agentserver/gateway .

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
COPY services/gateway/ services/gateway/
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/gateway ./services/gateway/cmd/gateway

# distroless/static has no shell, so no HEALTHCHECK here: probe GET /healthz on :8080 from the
# load balancer or orchestrator instead.
FROM gcr.io/distroless/static-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="agentserver-gateway" \
      org.opencontainers.image.description="agentserver public API gateway (REST :8080, gRPC :9090)"
COPY --from=build /out/gateway /usr/local/bin/gateway
# /healthz, /readyz and /metrics (the API calls' latency histogram) on the admin port.
ENV GATEWAY_ADMIN_ADDR=:9094
EXPOSE 8080 9090 9094
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gateway"]
