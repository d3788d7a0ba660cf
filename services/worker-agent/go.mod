module github.com/agentserver/agentserver/services/worker-agent

go 1.26.7

require github.com/agentserver/agentserver/gen v0.0.0
require github.com/agentserver/agentserver/pkg v0.0.0
replace github.com/agentserver/agentserver/gen => ../../gen
replace github.com/agentserver/agentserver/pkg => ../../pkg
