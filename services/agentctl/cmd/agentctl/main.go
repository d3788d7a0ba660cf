// Command agentctl is the command-line client of agentserver: it manages assistants, creates
// and waits for runs and shows the cluster's workers, talking gRPC to a gateway.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/agentserver/agentserver/services/agentctl/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], cli.Env{
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Getenv: os.Getenv,
	})
	stop()
	os.Exit(code)
}
