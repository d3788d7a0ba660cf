# syntax=docker/dockerfile:1

# worker-agent: runs flows in executor processes and talks to a scheduler only (SCHEDULER_ADDR).
# It holds no database credentials because it runs user code. Admin (GET /healthz) on :9093.
#
# Build from the repository root (the build context must be the root, where go.work is):
#   docker build -f deploy/docker/worker-agent.Dockerfile -t agentserver/worker-agent .
#
# Executors are started in the working directory /srv/agentserver, as the unprivileged user
# 10001. Ship your executors by deriving an image, for example:
#   FROM agentserver/worker-agent
#   COPY --chown=10001:10001 executors/ /srv/agentserver/
#   RUN python3 -m venv /srv/agentserver/.venv && /srv/agentserver/.venv/bin/pip install -r requirements.txt
# The runtime is Debian rather than distroless because executors need an interpreter (python3,
# with venv for their packages) and a normal userland.

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
COPY services/worker-agent/ services/worker-agent/
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/worker-agent ./services/worker-agent/cmd/worker-agent

FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="agentserver-worker-agent" \
      org.opencontainers.image.description="agentserver worker-agent with a Python 3 runtime for executors"
# tini is PID 1: it forwards SIGTERM (the worker drains on it) and reaps the executor processes
# that the worker does not wait for itself.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 agentserver \
    && useradd --uid 10001 --gid 10001 --home-dir /srv/agentserver --create-home \
       --shell /usr/sbin/nologin agentserver
COPY --from=build /out/worker-agent /usr/local/bin/worker-agent
# Executor protocol v1 is JSON lines on stdout: unbuffered Python writes each line at once.
ENV PYTHONUNBUFFERED=1 \
    WORKER_ADMIN_ADDR=:9093 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /srv/agentserver
EXPOSE 9093
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9093/healthz', timeout=2)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/worker-agent"]
