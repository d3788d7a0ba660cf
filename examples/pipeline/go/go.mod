module github.com/agentserver/agentserver/examples/pipeline/go

go 1.26.7
