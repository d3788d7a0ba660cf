module github.com/agentserver/agentserver/tools/consul

go 1.26.7
