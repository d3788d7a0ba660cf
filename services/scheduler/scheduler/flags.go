package scheduler

import "github.com/agentserver/agentserver/pkg/config"

// Bind registers the scheduler's settings on set, with cfg's values as defaults.
func Bind(set *config.Set, cfg *Config) {
	set.String(&cfg.ID, "id", "SCHEDULER_ID", cfg.ID, "instance id (generated when empty)")
	set.String(&cfg.GRPCAddr, "grpc-addr", "SCHEDULER_GRPC_ADDR", cfg.GRPCAddr, "address workers connect to")
	set.String(&cfg.AdminAddr, "admin-addr", "SCHEDULER_ADMIN_ADDR", cfg.AdminAddr, "/healthz, /readyz and /metrics address, e.g. :9092 (empty: off)")
	set.Duration(&cfg.LeaseTTL, "lease-ttl", "SCHEDULER_LEASE_TTL", cfg.LeaseTTL, "lease of a run without renewal")
	set.Duration(&cfg.HeartbeatInterval, "heartbeat-interval", "SCHEDULER_HEARTBEAT_INTERVAL", cfg.HeartbeatInterval, "worker heartbeat interval")
	set.Duration(&cfg.PollInterval, "poll-interval", "SCHEDULER_POLL_INTERVAL", cfg.PollInterval, "queue polling fallback")
	set.Duration(&cfg.ClaimCooldown, "claim-cooldown", "SCHEDULER_CLAIM_COOLDOWN", cfg.ClaimCooldown, "least time between two claims that found runs (larger claims under load; up to 4x while claims drain the queue at over 1,000 runs/s; 0: none)")
	set.Duration(&cfg.RecoverInterval, "recover-interval", "SCHEDULER_RECOVER_INTERVAL", cfg.RecoverInterval, "how often lost runs are recovered")
	set.Duration(&cfg.RetryBaseDelay, "retry-base-delay", "SCHEDULER_RETRY_BASE_DELAY", cfg.RetryBaseDelay, "backoff before the second attempt (doubles per attempt)")
	set.Duration(&cfg.RetryMaxDelay, "retry-max-delay", "SCHEDULER_RETRY_MAX_DELAY", cfg.RetryMaxDelay, "largest retry backoff")
	set.Duration(&cfg.TimeoutGrace, "timeout-grace", "SCHEDULER_TIMEOUT_GRACE", cfg.TimeoutGrace, "how long past its timeout a run may run before the scheduler ends it")
	set.Int(&cfg.QueueVacuumRuns, "queue-vacuum-runs", "SCHEDULER_QUEUE_VACUUM_RUNS", cfg.QueueVacuumRuns, "least runs claimed between two vacuums of the queue tables by this scheduler, more when a deep queue makes vacuums costly (0: leave them to autovacuum)")
	set.Duration(&cfg.EventHold, "event-hold", "SCHEDULER_EVENT_HOLD", cfg.EventHold, "how long a run's events wait for its result to be written with it (0: written as they come)")
	set.Duration(&cfg.ResultLinger, "result-linger", "SCHEDULER_RESULT_LINGER", cfg.ResultLinger, "how long a worker's results wait for more under load before a small batch of them is written (0: written at once; at most 100ms; fewer statements, later completions)")
	set.Duration(&cfg.ReconcileInterval, "reconcile-interval", "SCHEDULER_RECONCILE_INTERVAL", cfg.ReconcileInterval, "how often the running counts behind concurrency limits are recounted")
}
