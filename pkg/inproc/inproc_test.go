package inproc_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/agentserver/agentserver/pkg/inproc"
)

// duplex is a bidirectional-streaming service whose handler the test chooses.
type duplex struct {
	testpb.UnimplementedTestServiceServer
	handle func(grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error
}

func (d *duplex) FullDuplexCall(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	return d.handle(s)
}

func channelWith(handle func(grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error) testpb.TestServiceClient {
	return channelOf(new(inproc.Channel), handle)
}

func channelOf(ch *inproc.Channel, handle func(grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error) testpb.TestServiceClient {
	testpb.RegisterTestServiceServer(ch, &duplex{handle: handle})
	return testpb.NewTestServiceClient(ch)
}

func request(body string) *testpb.StreamingOutputCallRequest {
	return &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(body)}}
}

func TestUnaryCallsReachTheRegisteredService(t *testing.T) {
	t.Parallel()
	ch := new(inproc.Channel)
	hs := health.NewServer()
	hs.SetServingStatus("sched", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(ch, hs)
	client := healthpb.NewHealthClient(ch)

	resp, err := client.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "sched"})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, resp.GetStatus())

	_, err = client.Check(t.Context(), &healthpb.HealthCheckRequest{Service: "nope"})
	require.Equal(t, codes.NotFound, status.Code(err), "the handler's status reaches the caller")

	_, err = testpb.NewTestServiceClient(ch).EmptyCall(t.Context(), &testpb.Empty{})
	require.Equal(t, codes.Unimplemented, status.Code(err), "a service that was not registered")
}

// Every message arrives, in order, past the stream's buffer, and the handler's status
// comes after the last message it sent.
func TestStreamsCarryEveryMessageInOrderThenTheHandlersStatus(t *testing.T) {
	t.Parallel()
	const n = 2000 // several times the buffer of each direction
	client := channelWith(func(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
		for i := 0; ; i++ {
			req, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return status.Errorf(codes.Aborted, "saw %d", i)
			}
			if err != nil {
				return err
			}
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
				return err
			}
		}
	})
	stream, err := client.FullDuplexCall(t.Context())
	require.NoError(t, err)
	sent := make(chan error, 1)
	go func() {
		for i := range n {
			if err := stream.Send(request(fmt.Sprint(i))); err != nil {
				sent <- err
				return
			}
		}
		sent <- stream.CloseSend()
	}()
	for i := range n {
		resp, err := stream.Recv()
		require.NoError(t, err)
		require.Equal(t, fmt.Sprint(i), string(resp.GetPayload().GetBody()))
	}
	require.NoError(t, <-sent)
	_, err = stream.Recv()
	require.Equal(t, codes.Aborted, status.Code(err))
	require.Contains(t, err.Error(), fmt.Sprintf("saw %d", n))
}

// A handler that returns nil ends the stream with io.EOF; sends after that fail instead
// of blocking, on either side.
func TestStreamEndsWhenTheHandlerReturns(t *testing.T) {
	t.Parallel()
	late := make(chan error, 1)
	client := channelWith(func(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
		if err := s.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
		go func() {
			<-s.Context().Done() // the handler's context ends when it returns
			late <- s.Send(&testpb.StreamingOutputCallResponse{})
		}()
		return nil
	})
	stream, err := client.FullDuplexCall(t.Context())
	require.NoError(t, err)
	_, err = stream.Recv()
	require.NoError(t, err, "the message sent before returning arrives")
	_, err = stream.Recv()
	require.ErrorIs(t, err, io.EOF)
	require.Error(t, <-late, "a goroutine of the handler sending after it returned")
	for range 1000 { // more than the buffer: none may block
		if err = stream.Send(request("x")); err != nil {
			break
		}
	}
	require.ErrorIs(t, err, io.EOF)
}

// Cancelling the client's context ends the handler's: a handler waiting to receive learns
// the call was cancelled.
func TestClientCancellationReachesTheHandler(t *testing.T) {
	t.Parallel()
	got := make(chan error, 1)
	client := channelWith(func(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
		_, err := s.Recv()
		got <- err
		return err
	})
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := client.FullDuplexCall(ctx)
	require.NoError(t, err)
	cancel()
	select {
	case err := <-got:
		require.Equal(t, codes.Canceled, status.Code(err))
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not see the cancellation")
	}
	_, err = stream.Recv()
	require.Equal(t, codes.Canceled, status.Code(err))
}

// The two sides never share a message: each receives its own copy, which changes
// neither when the sender reuses its message after delivery nor changes the sender's.
func TestMessagesAreCopied(t *testing.T) {
	t.Parallel()
	received := make(chan *testpb.StreamingOutputCallRequest, 1)
	reused := make(chan struct{})
	reply := &testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte("reply")}}
	client := channelWith(func(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		received <- req
		<-reused
		if err := s.Send(reply); err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	})
	stream, err := client.FullDuplexCall(t.Context())
	require.NoError(t, err)
	req := request("hello")
	require.NoError(t, stream.Send(req))
	got := <-received
	require.NotSame(t, req, got)
	require.NotSame(t, req.GetPayload(), got.GetPayload())
	req.Payload.Body[0] = 'J' // the client reuses its message once it was received
	got.Payload.Body[1] = 'a' // and the server changes its copy
	close(reused)
	require.Equal(t, "hallo", string(got.GetPayload().GetBody()))
	require.Equal(t, "Jello", string(req.GetPayload().GetBody()))
	resp, err := stream.Recv()
	require.NoError(t, err)
	require.NotSame(t, reply, resp)
	resp.Payload.Body[0] = 'X'
	require.Equal(t, "reply", string(reply.GetPayload().GetBody()))
}

// With Share, a message is handed over: the receiver's message is its own, its field values
// are the sender's. Both directions of a stream and unary calls alike.
func TestSharedMessagesAreHandedOver(t *testing.T) {
	t.Parallel()
	received := make(chan *testpb.StreamingOutputCallRequest, 1)
	reply := &testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Type: testpb.PayloadType_COMPRESSABLE, Body: []byte("reply")}}
	client := channelOf(&inproc.Channel{Share: true}, func(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		received <- req
		return s.Send(reply)
	})
	stream, err := client.FullDuplexCall(t.Context())
	require.NoError(t, err)
	req := request("hello")
	req.ResponseParameters = []*testpb.ResponseParameters{{Size: 7}, {Size: 9}}
	req.ResponseStatus = &testpb.EchoStatus{Code: 3, Message: "m"}
	require.NoError(t, stream.Send(req))
	got := <-received
	require.NotSame(t, req, got, "the receiver's message is its own")
	require.Same(t, req.GetPayload(), got.GetPayload(), "a nested message is the sender's")
	require.Same(t, req.GetResponseStatus(), got.GetResponseStatus())
	require.Len(t, got.GetResponseParameters(), 2)
	require.Same(t, req.GetResponseParameters()[1], got.GetResponseParameters()[1], "a list holds the sender's elements")
	require.True(t, proto.Equal(req, got))
	got.Payload = nil // changing the receiver's top level leaves the sender's alone
	require.Equal(t, "hello", string(req.GetPayload().GetBody()))

	resp, err := stream.Recv()
	require.NoError(t, err)
	require.NotSame(t, reply, resp)
	require.Same(t, reply.GetPayload(), resp.GetPayload())
	require.Equal(t, testpb.PayloadType_COMPRESSABLE, resp.GetPayload().GetType())

	// Unary calls hand over both ways too.
	ch := &inproc.Channel{Share: true}
	echo := &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("pong")}, Username: "u"}
	var in *testpb.SimpleRequest
	testpb.RegisterTestServiceServer(ch, &unary{handle: func(r *testpb.SimpleRequest) *testpb.SimpleResponse { in = r; return echo }})
	sreq := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("ping")}}
	sresp, err := testpb.NewTestServiceClient(ch).UnaryCall(t.Context(), sreq)
	require.NoError(t, err)
	require.NotSame(t, sreq, in)
	require.Same(t, sreq.GetPayload(), in.GetPayload())
	require.NotSame(t, echo, sresp)
	require.Same(t, echo.GetPayload(), sresp.GetPayload())
	require.Equal(t, "u", sresp.GetUsername())
}

// unary is a service whose UnaryCall the test chooses.
type unary struct {
	testpb.UnimplementedTestServiceServer
	handle func(*testpb.SimpleRequest) *testpb.SimpleResponse
}

func (u *unary) UnaryCall(_ context.Context, r *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return u.handle(r), nil
}

// Outgoing metadata of the client arrives as incoming metadata of the handler.
func TestMetadataReachesTheHandler(t *testing.T) {
	t.Parallel()
	got := make(chan metadata.MD, 1)
	client := channelWith(func(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
		md, _ := metadata.FromIncomingContext(s.Context())
		got <- md
		return nil
	})
	ctx := metadata.AppendToOutgoingContext(t.Context(), "worker", "w-1")
	_, err := client.FullDuplexCall(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"w-1"}, (<-got).Get("worker"))
}
