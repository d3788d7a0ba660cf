package store

import (
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/agentserver/agentserver/pkg/pgtest"
)

// synchronousCommit is the synchronous_commit setting of a connection of pool.
func synchronousCommit(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var v string
	require.NoError(t, pool.QueryRow(t.Context(), `SHOW synchronous_commit`).Scan(&v))
	return v
}

// withParam returns dbURL with the query parameter key set to value.
func withParam(t *testing.T, dbURL, key, value string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err)
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20") // pgx reads + as itself
	return u.String()
}

// TestCommitsAreDurableWhateverTheServerDefault: the tests' PostgreSQL runs with
// synchronous_commit off; every connection of the store commits synchronously all the
// same, unless the database URL chose a setting itself, and a stronger setting of the
// server's is never weakened.
func TestCommitsAreDurableWhateverTheServerDefault(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dbURL)
	require.NoError(t, err)
	defer conn.Close(ctx)
	var def string
	require.NoError(t, conn.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&def))
	require.Equal(t, "off", def, "the tests' PostgreSQL is expected to run with synchronous_commit off")

	open := func(u string) *Store {
		st, err := Open(ctx, u)
		require.NoError(t, err)
		t.Cleanup(st.Close)
		return st
	}
	st := open(dbURL)
	require.Equal(t, "on", synchronousCommit(t, st.pool), "the store's connections commit synchronously")
	require.Equal(t, "on", synchronousCommit(t, st.hot), "so do the claim and finish path's")

	for name, u := range map[string]string{
		"a parameter of its own": withParam(t, dbURL, "synchronous_commit", "local"),
		"options":                withParam(t, dbURL, "options", "-c synchronous_commit=local"),
	} {
		st := open(u)
		require.Equal(t, "local", synchronousCommit(t, st.pool), "a URL that sets synchronous_commit through %s keeps it", name)
		require.Equal(t, "local", synchronousCommit(t, st.hot), "a URL that sets synchronous_commit through %s keeps it", name)
	}

	var db string
	require.NoError(t, conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db))
	_, err = conn.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` SET synchronous_commit = remote_apply`)
	require.NoError(t, err)
	st = open(dbURL)
	require.Equal(t, "remote_apply", synchronousCommit(t, st.pool), "a stronger default is not weakened")
	require.Equal(t, "remote_apply", synchronousCommit(t, st.hot), "a stronger default is not weakened")
}
