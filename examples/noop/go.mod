module github.com/agentserver/agentserver/examples/noop

go 1.26.7
