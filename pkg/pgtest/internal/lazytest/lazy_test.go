// Package lazytest checks pgtest without pgtest.Main: the server is started
// by the first test that needs it and shared by the others.
package lazytest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

var firstPort int

func check(t *testing.T) {
	conn, err := pgx.Connect(t.Context(), pgtest.NewDatabase(t))
	require.NoError(t, err)
	defer conn.Close(context.Background())
	var one int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT 1").Scan(&one))
	require.Equal(t, 1, one)
}

func TestFirst(t *testing.T) {
	check(t)
	firstPort = pgtest.Server(t).Port()
}

func TestSecondSharesTheServer(t *testing.T) {
	check(t)
	require.Equal(t, firstPort, pgtest.Server(t).Port())
}
