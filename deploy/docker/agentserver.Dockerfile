# syntax=docker/dockerfile:1

# agentserver (all-in-one): `agentserver dev` runs gateway, scheduler, worker and autoscaler in
# one process, for development and small single-host installs. Gateway REST :8080 (GET
# /healthz), gateway gRPC :9090, scheduler gRPC :9091 (for extra workers). agentctl is included.
#
# Build from the repository root (the build context must be the root, where go.work is):
#   docker build -f deploy/docker/agentserver.Dockerfile -t agentserver/agentserver .
#   docker run --rm -p 8080:8080 -p 9090:9090 agentserver/agentserver
#
# With DATABASE_URL unset, `agentserver dev` starts a private PostgreSQL from the local
# installation, so the image carries PostgreSQL 15 (its binaries are on PATH) and runs as a
# non-root user, which PostgreSQL requires. Its data lives in AGENTSERVER_STATE_DIR, under
# /var/lib/agentserver: mount a volume there to keep it. The worker inside runs user code next to the database credentials:
# this image is for development, use the split images in production.

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
COPY services/ services/
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/ \
      ./services/agentserver/cmd/agentserver ./services/agentctl/cmd/agentctl

FROM debian:bookworm-slim AS runtime
LABEL org.opencontainers.image.title="agentserver" \
      org.opencontainers.image.description="agentserver all-in-one (agentserver dev) with PostgreSQL 15 and Python 3"
# postgresql-common is installed first so that installing the server does not create the
# unused "main" cluster (the same step as the official postgres image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/#(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends ca-certificates postgresql-15 python3 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 agentserver \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/agentserver --create-home \
       --shell /usr/sbin/nologin agentserver
COPY --from=build /out/agentserver /out/agentctl /usr/local/bin/
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    AGENTSERVER_STATE_DIR=/var/lib/agentserver/state \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/agentserver
EXPOSE 8080 9090 9091
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/agentserver"]
CMD ["dev"]
