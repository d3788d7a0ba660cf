module github.com/agentserver/agentserver/services/agentserver

go 1.26.7

require github.com/agentserver/agentserver/gen v0.0.0

require github.com/agentserver/agentserver/pkg v0.0.0

require github.com/agentserver/agentserver/services/gateway v0.0.0

require github.com/agentserver/agentserver/services/scheduler v0.0.0

require github.com/agentserver/agentserver/services/worker-agent v0.0.0

require (
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.12.0 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/text v0.44.0 // indirect
)

replace github.com/agentserver/agentserver/gen => ../../gen

replace github.com/agentserver/agentserver/pkg => ../../pkg

replace github.com/agentserver/agentserver/services/gateway => ../gateway

replace github.com/agentserver/agentserver/services/scheduler => ../scheduler

replace github.com/agentserver/agentserver/services/worker-agent => ../worker-agent
