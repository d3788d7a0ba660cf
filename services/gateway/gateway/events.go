package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
)

// sseHeartbeat is how often an idle event stream gets a comment line, so proxies keep it.
const sseHeartbeat = 15 * time.Second

// eventsHandler serves GET /v1/runs/{run}/events: Server-Sent Events when the client
// accepts text/event-stream (resuming after Last-Event-ID), else a JSON page. It calls
// the gRPC API over the gateway's own client connection, so interceptors apply.
func eventsHandler(mux *runtime.ServeMux, conn *grpc.ClientConn) runtime.HandlerFunc {
	client := agentserverv1.NewRunServiceClient(conn)
	json := &runtime.JSONPb{MarshalOptions: protojson.MarshalOptions{EmitUnpopulated: true}}
	fail := func(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
		runtime.DefaultHTTPErrorHandler(ctx, mux, json, w, r, err)
	}
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		ctx := r.Context()
		if md := outgoing(r); md != nil {
			ctx = metadata.NewOutgoingContext(ctx, md)
		}
		name := "runs/" + params["run"]
		if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
			size, _ := strconv.Atoi(r.URL.Query().Get("page_size"))
			resp, err := client.ListRunEvents(ctx, &agentserverv1.ListRunEventsRequest{
				Name: name, PageSize: int32(size), PageToken: r.URL.Query().Get("page_token"),
			})
			if err != nil {
				fail(ctx, w, r, err)
				return
			}
			b, err := json.Marshal(resp)
			if err != nil {
				fail(ctx, w, r, err)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(b)
			return
		}

		var after int64
		if last := firstNonEmpty(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("last_event_id")); last != "" {
			n, err := strconv.ParseInt(last, 10, 64)
			if err != nil || n < 0 {
				fail(ctx, w, r, status.Errorf(codes.InvalidArgument, "Last-Event-ID: must be the id of an event this stream sent (a number), got %q", last))
				return
			}
			after = n
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := client.StreamRunEvents(ctx, &agentserverv1.StreamRunEventsRequest{Name: name, AfterSeq: after})
		if err != nil {
			fail(ctx, w, r, err)
			return
		}
		// The first receive reports errors (unknown run, bad name) before any byte is
		// written, so they still get a proper HTTP status.
		type item struct {
			ev  *agentserverv1.RunEvent
			err error
		}
		items := make(chan item)
		go func() {
			defer close(items)
			for {
				ev, err := stream.Recv()
				select {
				case items <- item{ev, err}:
				case <-ctx.Done():
					return
				}
				if err != nil {
					return
				}
			}
		}()
		first := true
		flusher, _ := w.(http.Flusher)
		beat := time.NewTicker(sseHeartbeat)
		defer beat.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-beat.C:
				if first {
					startSSE(w)
					first = false
				}
				_, _ = io.WriteString(w, ": keepalive\n\n")
			case it, ok := <-items:
				if !ok {
					return
				}
				if it.err != nil {
					if first && !errors.Is(it.err, io.EOF) {
						fail(ctx, w, r, it.err)
					}
					return
				}
				if first {
					startSSE(w)
					first = false
				}
				data, err := protojson.Marshal(it.ev)
				if err != nil {
					return
				}
				if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", it.ev.GetSeq(), it.ev.GetType(), data); err != nil {
					return
				}
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

func startSSE(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// outgoing forwards the caller's credentials to the gRPC API.
func outgoing(r *http.Request) metadata.MD {
	if a := r.Header.Get("Authorization"); a != "" {
		return metadata.Pairs("authorization", a)
	}
	return nil
}
