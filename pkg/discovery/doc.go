// Package discovery owns how agentserver processes find each other: a service
// registers itself (with a health check) and its peers resolve the healthy
// instances of a service by name, once or continuously.
//
// There is one interface, [Discovery], and two implementations:
//
//   - [Static]: fixed addresses per service name plus whatever this process
//     registers itself, for the single-host and split deployment modes (and
//     for the all-in-one process, where services register and resolve each
//     other in memory).
//   - [Consul]: a Consul agent, for the distributed mode, configured from the
//     standard CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN environment variables
//     (and the rest that api.DefaultConfig reads: CONSUL_HTTP_SSL,
//     CONSUL_CACERT, …). Every service registers on start with a gRPC-health,
//     HTTP or TTL check (interval [DefaultCheckInterval], removal from the
//     catalog [DefaultDeregisterAfter] after it turns critical), deregisters on
//     clean shutdown, and its peers watch it with blocking queries on
//     /v1/health/service/<name>?passing.
//
// gRPC clients do not call Resolve themselves: [DialOptions] installs
// resolvers for "consul:///<service>" (backed by Watch, so a connection
// follows the healthy set without a restart) and "static:///host:port,…"
// targets, with round-robin balancing; [WithConsistentHash] switches a client
// to the "consistent_hash" balancer, which routes each call by the key that
// [WithHashKey] put on its context (an assistant or thread id) over a
// [hashring.Ring] of the healthy instances and fails over clockwise.
//
// # Failover timing
//
// An instance leaves the healthy set, and so every resolver and every DNS
// answer, as soon as its check fails once: within one Interval for gRPC and
// HTTP checks, and when its TTL (one Interval) runs out without a heartbeat for
// a TTL check. Removal from the catalog comes later: Consul enforces a minimum
// of one minute for DeregisterCriticalServiceAfter and runs its reaper every
// 30 seconds, so on its own a killed process disappears from the catalog 60 to
// 90 seconds after it turned critical, whatever DeregisterAfter says below one
// minute. [Consul.Reap] closes that gap: a live process removes, through its own
// agent, sibling instances critical for longer than DeregisterAfter (the
// announce package runs it in every agentserver process). Nothing routes to a
// critical instance in any case.
//
// # DNS
//
// Consul serves the same healthy set over DNS on the agent's DNS port (8600
// by default, -dns-port): an SRV query for <service>.service.consul returns
// one record per passing instance with its port and a target whose A record
// is the instance's address, and an A query for the same name returns the
// addresses alone; "<tag>.<service>.service.consul" narrows to instances
// carrying a tag (for example gpu.agentserver-worker.service.consul). For example:
//
//	dig @127.0.0.1 -p 8600 agentserver-gateway.service.consul SRV
//
// Load balancers and tools that cannot call the HTTP API (NGINX and HAProxy
// with their DNS resolvers pointed at the agent) use this interface. Services
// should prefer the gRPC resolver, which sees a change as soon as Consul does
// instead of when a DNS answer's TTL expires.
//
// # What this package must never do
//
// It never decides placement or owns any run, worker or lease state (the
// scheduler and the queue do), never talks to PostgreSQL, and never starts,
// stops or configures Consul agents or servers: it is a client of the agent
// the deployment provides (tests start their own through discoverytest). It
// never blocks a caller's request path on Consul: resolution happens in
// background watches and callers read the last known healthy set.
package discovery
