module github.com/agentserver/agentserver/services/autoscaler

go 1.26.7

require (
	github.com/agentserver/agentserver/pkg v0.0.0
	github.com/spf13/cobra v1.10.2
	github.com/stretchr/testify v1.12.1
	golang.org/x/sync v0.25.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
)

replace github.com/agentserver/agentserver/gen => ../../gen

replace github.com/agentserver/agentserver/pkg => ../../pkg
