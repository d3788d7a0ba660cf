module github.com/agentserver/agentserver/services/autoscaler

go 1.26.7

require (
	github.com/agentserver/agentserver/gen v0.0.0
	github.com/agentserver/agentserver/pkg v0.0.0
	github.com/spf13/cobra v1.10.2
	github.com/spf13/pflag v1.0.9
	github.com/stretchr/testify v1.12.1
	gopkg.in/yaml.v3 v3.0.1
)

replace github.com/agentserver/agentserver/gen => ../../gen

replace github.com/agentserver/agentserver/pkg => ../../pkg
