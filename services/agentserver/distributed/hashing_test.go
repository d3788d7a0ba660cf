package distributed

import (
	"fmt"
	"maps"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/client"
	"github.com/agentserver/agentserver/pkg/discovery/announce"
	"github.com/agentserver/agentserver/pkg/proctest"
)

// TestConsistentHashingAndGracefulStop checks request locality through pkg/client
// against real gateways resolved from Consul: calls keyed by a thread id reach the same
// gateway (named by its x-agentserver-gateway header) while the set is stable; a gateway
// stopped with SIGTERM leaves Consul's catalog at once (it deregisters before it stops
// serving); and only the keys it owned move, to the next gateways on the ring.
func TestConsistentHashingAndGracefulStop(t *testing.T) {
	const keys = 90
	c := newCluster(t)
	gws := map[string]*gatewayProc{}
	for i := range 3 {
		id := fmt.Sprintf("gateway-%d", i+1)
		gws[id] = c.startGateway(id)
	}
	cl := c.newClient(client.WithConsistentHash())
	c.createAssistant(cl, "hash", 1)

	answeredBy := func(key string) string {
		t.Helper()
		var md metadata.MD
		_, err := cl.Assistants.GetAssistant(client.WithKey(t.Context(), key),
			&agentserverv1.GetAssistantRequest{Name: "assistants/hash"}, grpc.Header(&md))
		require.NoError(t, err, "key %s", key)
		v := md.Get(client.GatewayHeader)
		require.Len(t, v, 1)
		return v[0]
	}
	pass := func() (map[string]string, map[string]int) {
		owner, share := map[string]string{}, map[string]int{}
		for i := range keys {
			k := fmt.Sprintf("threads/t-%d", i)
			owner[k] = answeredBy(k)
			share[owner[k]]++
		}
		return owner, share
	}
	// The set is stable once the client is connected to all three: two passes agree.
	owner, share := pass()
	proctest.Eventually(t, 60*time.Second, "a stable mapping over three gateways", func() (bool, string) {
		next, s := pass()
		stable := len(s) == 3 && maps.Equal(owner, next)
		owner, share = next, s
		return stable, fmt.Sprint(s)
	})
	for range 2 {
		again, _ := pass()
		require.Equal(t, owner, again, "a key moved while the set was stable")
	}

	// Graceful stop: out of the catalog (not only the healthy set) at once.
	stopped := time.Now()
	gws["gateway-2"].Signal(syscall.SIGTERM)
	proctest.Eventually(t, 10*time.Second, "gateway-2 deregistered", func() (bool, string) {
		return !c.inCatalog(announce.Gateway, "gateway-2"), "still in the catalog"
	})
	deregistered := time.Since(stopped)
	gws["gateway-2"].Wait(30 * time.Second)

	after, afterShare := pass()
	moved := 0
	for k, o := range owner {
		if o == "gateway-2" {
			require.NotEqual(t, "gateway-2", after[k])
			moved++
			continue
		}
		require.Equal(t, o, after[k], "key %s of a remaining gateway moved", k)
	}
	require.Equal(t, share["gateway-2"], moved)
	t.Logf("consistent hashing: %d keys over 3 gateways %v, stable over 3 passes; gateway-2 stopped with SIGTERM left the catalog after %s; "+
		"its %d keys moved, the other %d stayed (now %v)", keys, share, deregistered.Round(time.Millisecond), moved, keys-moved, afterShare)
}
