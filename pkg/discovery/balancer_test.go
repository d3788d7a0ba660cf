package discovery_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/agentserver/agentserver/pkg/discovery"
	"github.com/agentserver/agentserver/pkg/hashring"
)

// call makes one health RPC (routed by key when key is not empty) and
// returns the address of the server that answered.
func call(ctx context.Context, client healthpb.HealthClient, key string) (string, error) {
	if key != "" {
		ctx = discovery.WithHashKey(ctx, key)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var p peer.Peer
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
		return "", err
	}
	return p.Addr.String(), nil
}

// callRetry is call with the one retry the failover requirement allows: a
// call already on its way to a server that dies fails with UNAVAILABLE, and
// its retry must succeed. It reports whether the retry was needed.
func callRetry(t *testing.T, client healthpb.HealthClient, key string) (string, bool) {
	t.Helper()
	got, err := call(t.Context(), client, key)
	if status.Code(err) != codes.Unavailable {
		require.NoError(t, err, "key %q", key)
		return got, false
	}
	got, err = call(t.Context(), client, key)
	require.NoError(t, err, "key %q: the retry after %v", key, err)
	return got, true
}

// waitAllServing calls without a key (round-robin over READY connections)
// until every address in want has answered, so all connections are READY.
func waitAllServing(t *testing.T, client healthpb.HealthClient, want []string) {
	t.Helper()
	seen := map[string]bool{}
	waitFor(t, 20*time.Second, "every server answering", func() (bool, string) {
		a, err := call(t.Context(), client, "")
		if err != nil {
			return false, err.Error()
		}
		seen[a] = true
		for _, w := range want {
			if !seen[w] {
				return false, fmt.Sprintf("seen %v", seen)
			}
		}
		return true, ""
	})
}

func TestStaticTargetRoundRobin(t *testing.T) {
	t.Parallel()
	a, b := startHealthServer(t), startHealthServer(t)
	conn, err := grpc.NewClient("static:///"+a.Addr+","+b.Addr,
		append(discovery.DialOptions(nil), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	require.NoError(t, err)
	defer conn.Close()
	waitAllServing(t, healthpb.NewHealthClient(conn), []string{a.Addr, b.Addr})
}

func TestStaticTargetRejectsBadAddress(t *testing.T) {
	t.Parallel()
	conn, err := grpc.NewClient("static:///nohostport",
		append(discovery.DialOptions(nil), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err == nil {
		// The resolver is built on first use; the call then fails.
		defer conn.Close()
		_, err = call(t.Context(), healthpb.NewHealthClient(conn), "")
	}
	require.ErrorContains(t, err, "host:port")
}

// TestConsistentHashBalancer checks the balancer against the ring itself:
// every key reaches the ring's owner while the set is stable, and after one
// server stops, keys it did not own stay where they were and its keys go to
// the next server clockwise, with no failed call.
func TestConsistentHashBalancer(t *testing.T) {
	t.Parallel()
	servers := []*healthServer{startHealthServer(t), startHealthServer(t), startHealthServer(t)}
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.Addr)
	}
	conn, err := grpc.NewClient("static:///"+strings.Join(addrs, ","),
		append(discovery.DialOptions(nil), discovery.WithConsistentHash(),
			grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	require.NoError(t, err)
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	waitAllServing(t, client, addrs)

	ring := hashring.New(addrs, 0)
	keys := make([]string, 300)
	count := map[string]int{}
	for i := range keys {
		keys[i] = fmt.Sprintf("thread-%d", i)
		owner, _ := ring.Owner(keys[i])
		for range 2 {
			got, err := call(t.Context(), client, keys[i])
			require.NoError(t, err)
			require.Equal(t, owner, got, "key %s", keys[i])
		}
		count[owner]++
	}
	require.Len(t, count, 3, "keys spread over all three servers: %v", count)

	// servers[0] goes away as if it crashed: connections drop, no GOAWAY.
	stopped := servers[0]
	stopped.srv.Stop()
	after := hashring.New(addrs[1:], 0)
	moved, retried := 0, 0
	for _, k := range keys {
		before, _ := ring.Owner(k)
		want, _ := after.Owner(k)
		if before != stopped.Addr {
			require.Equal(t, before, want, "the ring property itself")
		} else {
			moved++
			require.Equal(t, slices.Collect(ring.Walk(k))[1], want)
		}
		got, again := callRetry(t, client, k)
		if again {
			retried++
		}
		require.Equal(t, want, got, "key %s (owned by %s before)", k, before)
	}
	t.Logf("%d of %d keys moved off the stopped server; %d calls needed their one retry", moved, len(keys), retried)
	require.LessOrEqual(t, retried, 1, "only a call racing the crash may fail")
	require.Equal(t, count[stopped.Addr], moved)
}
