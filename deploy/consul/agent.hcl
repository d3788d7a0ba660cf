# A single-node Consul agent for development: server, UI and DNS on one machine. Run it with
#   consul agent -config-file=deploy/consul/agent.hcl
# and point the services at it with CONSUL_HTTP_ADDR=127.0.0.1:8500. Each agentserver service
# registers itself on start with its own health check (every 10 s, deregistered after 3 failed
# checks by default) and deregisters on shutdown, so no service is declared here.
#
# Services in containers reach the agent only if it listens beyond loopback: set client_addr
# to "0.0.0.0" there. Not for production: a cluster runs 3 or 5 servers (bootstrap_expect),
# with ACLs and TLS on.

datacenter = "dev"
node_name  = "agentserver-dev"
data_dir   = "/tmp/consul-agentserver"

server           = true
bootstrap_expect = 1

bind_addr   = "127.0.0.1"
client_addr = "127.0.0.1"

ui_config {
  enabled = true
}

# The services register HTTP or gRPC checks; none needs script checks, which run commands.
enable_script_checks = false

log_level = "INFO"
