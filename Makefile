# agentserver — make run starts the all-in-one server; make test runs every check CI runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# Modules of the workspace that hold code and tests (tools/ only pins tools).
MODULES := gen pkg services/gateway services/scheduler services/worker-agent services/autoscaler services/agentctl services/agentserver
BIN := bin
GO_TEST_FLAGS ?= -timeout 15m

.PHONY: all run build deps consul generate check-generate lint test test-go test-deploy bench clean

all: build

## deps: install what the server and tests need (PostgreSQL, python3) when missing.
deps:
	@deploy/scripts/install-deps.sh

## consul: build the pinned Consul agent (v1.14.11) into bin/consul once; tests start it in dev mode.
consul:
	@deploy/scripts/build-consul.sh

## build: compile every binary into bin/.
build:
	go build -o $(BIN)/ ./services/gateway/cmd/gateway ./services/scheduler/cmd/scheduler \
		./services/worker-agent/cmd/worker-agent ./services/agentctl/cmd/agentctl \
		./services/agentserver/cmd/agentserver

## run: the all-in-one server (REST :8080, gRPC :9090) with a private PostgreSQL.
run: deps build
	$(BIN)/agentserver dev

## generate: regenerate gen/ from proto/ (offline, pinned tools).
generate:
	find gen -name '*.pb.go' -o -name '*.pb.gw.go' -o -name '*.swagger.json' | xargs -r rm -f
	go tool buf generate

## check-generate: fail when gen/ is not what proto/ generates.
check-generate:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	go tool buf generate -o "$$tmp"; \
	if ! diff -r -q -x go.mod -x go.sum "$$tmp/gen" gen; then \
		echo "gen/ is out of date: run 'make generate' and commit the result"; exit 1; \
	fi; echo "gen/ is up to date"

## lint: buf lint, gofmt and go vet over every module.
lint:
	go tool buf lint
	@out=$$(gofmt -l $(MODULES) deploy bench); if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet $(addprefix github.com/agentserver/agentserver/,$(addsuffix /...,$(MODULES)))
	cd deploy && GOWORK=off go vet ./...
	cd bench && GOWORK=off go vet ./...

## test: everything CI runs.
test: deps consul check-generate lint test-go test-deploy

test-go:
	go test $(GO_TEST_FLAGS) $(addprefix github.com/agentserver/agentserver/,$(addsuffix /...,$(MODULES)))

test-deploy:
	cd deploy && GOWORK=off go test ./...
	cd examples/noop && GOWORK=off go test ./...
	cd examples/pipeline/go && GOWORK=off go test ./...
	cd bench && GOWORK=off go test ./...

## bench: agentserver against River on the same PostgreSQL (BENCH_FLAGS=--quick for ~1 minute).
bench: build
	cd bench && GOWORK=off go run ./cmd/benchall $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
