// Package inproc connects gRPC clients to services in the same process without a network.
// A Channel is both the registrar the services are registered on and the connection their
// clients call through: a call runs the service's handler in its own goroutine, as a
// server would, and hands it copies of the messages instead of encoding them, framing them
// in HTTP/2 and passing them through a socket. The all-in-one server connects its workers
// to its scheduler this way; services that run in processes of their own use real gRPC.
//
// It keeps the semantics the services rely on: a stream's handler sees the client's
// cancellation in its context, the client sees the handler's return (io.EOF, or its error
// as a status) after every message the handler sent before it, a send on an ended stream
// fails, and outgoing metadata arrives as incoming metadata. By default the receiver gets a
// copy of each message, so the two sides never share one; as with gRPC ("it is not safe to
// modify the message after calling SendMsg"), a sender must leave a message alone once
// sent: it is copied when received, not when sent (copying both times was ~5 % of the
// all-in-one server's CPU). A Channel with Share set hands messages over instead of
// copying them (see Share). Headers and trailers are not carried (no service here uses
// them).
package inproc

import (
	"context"
	"io"
	"reflect"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// streamBuffer is how many messages each direction of a stream holds before a send
// waits for the receiver (the in-process stand-in for HTTP/2 flow control).
const streamBuffer = 256

// Channel is an in-process connection to the services registered on it. The zero value is
// ready to use.
type Channel struct {
	// Share hands each message over instead of copying it: the receiver's message is its
	// own (resetting or setting its top-level fields changes nothing of the sender's), but
	// every field value in it — nested messages, lists, maps, bytes — is the sender's. Set
	// it only when both sides of every service on the channel treat a message, and all it
	// references, as read-only once sent or received; in exchange a message costs a
	// top-level field copy instead of a deep copy (the deep copies of the scheduler
	// protocol's messages were ~8 % of the all-in-one server's CPU in a burn-down). Set it
	// before the first call.
	Share bool

	mu       sync.RWMutex
	services map[string]*service
}

type service struct {
	impl    any
	methods map[string]grpc.MethodDesc
	streams map[string]grpc.StreamDesc
}

var (
	_ grpc.ClientConnInterface = (*Channel)(nil)
	_ grpc.ServiceRegistrar    = (*Channel)(nil)
)

// RegisterService registers a service and its implementation, as on a grpc.Server.
func (c *Channel) RegisterService(desc *grpc.ServiceDesc, impl any) {
	svc := &service{impl: impl, methods: make(map[string]grpc.MethodDesc), streams: make(map[string]grpc.StreamDesc)}
	for _, m := range desc.Methods {
		svc.methods[m.MethodName] = m
	}
	for _, s := range desc.Streams {
		svc.streams[s.StreamName] = s
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.services == nil {
		c.services = make(map[string]*service)
	}
	c.services[desc.ServiceName] = svc
}

// lookup splits "/package.Service/Method" and finds the service.
func (c *Channel) lookup(fullMethod string) (*service, string, error) {
	name, method, ok := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	c.mu.RLock()
	svc := c.services[name]
	c.mu.RUnlock()
	if !ok || svc == nil {
		return nil, "", status.Errorf(codes.Unimplemented, "unknown service %q", name)
	}
	return svc, method, nil
}

// serverContext is the context a handler runs in: cancelled with the client's, carrying
// the client's outgoing metadata as incoming and none of the client's other values.
func serverContext(ctx context.Context) (context.Context, context.CancelFunc) {
	base := context.Background()
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		base = metadata.NewIncomingContext(base, md.Copy())
	}
	cancelDeadline := context.CancelFunc(func() {})
	if d, ok := ctx.Deadline(); ok {
		base, cancelDeadline = context.WithDeadline(base, d)
	}
	sctx, cancel := context.WithCancelCause(base)
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	return sctx, func() { stop(); cancel(context.Canceled); cancelDeadline() }
}

// ctxErr is the status of a call whose context ended: Canceled or DeadlineExceeded, as
// gRPC reports it, whatever cause the context was cancelled with.
func ctxErr(ctx context.Context) error {
	return status.FromContextError(ctx.Err()).Err()
}

// copyMessage fills dst with a copy of src; with share, with src's field values (a
// shallow copy: see Channel.Share).
func copyMessage(dst, src any, share bool) error {
	d, ok := dst.(proto.Message)
	s, ok2 := src.(proto.Message)
	if !ok || !ok2 {
		return status.Errorf(codes.Internal, "inproc: %T and %T must be protobuf messages", dst, src)
	}
	if dv, sv := reflect.ValueOf(d), reflect.ValueOf(s); share && dv.Type() == sv.Type() && dv.Kind() == reflect.Pointer {
		// The receiver's struct becomes a copy of the sender's: its own top level, the
		// sender's field values (nested messages, lists, maps, bytes, unknown fields). The
		// generated struct's internal state is per type (message info) or a cache that
		// Marshal recomputes (size), so copying it is as good as a fresh message's.
		// ~20 ns, where protoreflect's Range and Set took ~0.5 µs per message.
		dv.Elem().Set(sv.Elem())
		return nil
	}
	proto.Reset(d)
	proto.Merge(d, s)
	return nil
}

// Invoke calls a unary method.
func (c *Channel) Invoke(ctx context.Context, method string, args, reply any, _ ...grpc.CallOption) error {
	svc, name, err := c.lookup(method)
	if err != nil {
		return err
	}
	md, ok := svc.methods[name]
	if !ok {
		return status.Errorf(codes.Unimplemented, "unknown method %q", method)
	}
	if err := ctx.Err(); err != nil {
		return ctxErr(ctx)
	}
	sctx, cancel := serverContext(ctx)
	defer cancel()
	type answer struct {
		out any
		err error
	}
	done := make(chan answer, 1)
	go func() {
		out, err := md.Handler(svc.impl, sctx, func(in any) error { return copyMessage(in, args, c.Share) }, nil)
		done <- answer{out, err}
	}()
	select {
	case a := <-done:
		if a.err != nil {
			return status.Convert(a.err).Err()
		}
		return copyMessage(reply, a.out, c.Share)
	case <-ctx.Done():
		return ctxErr(ctx)
	}
}

// NewStream opens a stream to a streaming method; its handler starts at once.
func (c *Channel) NewStream(ctx context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	svc, name, err := c.lookup(method)
	if err != nil {
		return nil, err
	}
	sd, ok := svc.streams[name]
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "unknown method %q", method)
	}
	if err := ctx.Err(); err != nil {
		return nil, ctxErr(ctx)
	}
	sctx, cancel := serverContext(ctx)
	st := &stream{
		up:         make(chan proto.Message, streamBuffer),
		upClosed:   make(chan struct{}),
		down:       make(chan proto.Message, streamBuffer),
		serverDone: make(chan struct{}),
		share:      c.Share,
	}
	go func() {
		err := sd.Handler(svc.impl, &serverStream{st: st, ctx: sctx})
		if err != nil {
			st.final = status.Convert(err).Err()
		}
		close(st.serverDone)
		cancel()
	}()
	return &clientStream{st: st, ctx: ctx}, nil
}

// stream is the state two ends of one call share.
type stream struct {
	up       chan proto.Message // client to server
	upClosed chan struct{}      // CloseSend
	closeOne sync.Once
	down     chan proto.Message // server to client
	// serverDone closes when the handler returned; final is its error (nil: io.EOF).
	serverDone chan struct{}
	final      error
	// share: messages are handed over, not copied (Channel.Share).
	share bool
}

// message checks that m is a protobuf message; the receiver copies it (copyMessage).
func message(m any) (proto.Message, error) {
	p, ok := m.(proto.Message)
	if !ok {
		return nil, status.Errorf(codes.Internal, "inproc: %T is not a protobuf message", m)
	}
	return p, nil
}

type clientStream struct {
	st  *stream
	ctx context.Context
}

func (c *clientStream) Header() (metadata.MD, error) { return metadata.MD{}, nil }
func (c *clientStream) Trailer() metadata.MD         { return metadata.MD{} }
func (c *clientStream) Context() context.Context     { return c.ctx }

func (c *clientStream) CloseSend() error {
	c.st.closeOne.Do(func() { close(c.st.upClosed) })
	return nil
}

// SendMsg sends m, which must not be modified afterwards. As with gRPC, a stream whose
// server has ended answers io.EOF and RecvMsg tells why.
func (c *clientStream) SendMsg(m any) error {
	select {
	case <-c.st.upClosed:
		return status.Error(codes.Internal, "inproc: SendMsg called after CloseSend")
	default:
	}
	return send(c.ctx, c.st.up, m, c.st.serverDone, io.EOF)
}

// RecvMsg receives the next message; after the last one, io.EOF or the handler's error.
func (c *clientStream) RecvMsg(m any) error {
	return receive(c.ctx, c.st.down, m, c.st.share, c.st.serverDone, func() error {
		if c.st.final != nil {
			return c.st.final
		}
		return io.EOF
	})
}

type serverStream struct {
	st  *stream
	ctx context.Context
}

func (s *serverStream) SetHeader(metadata.MD) error  { return nil }
func (s *serverStream) SendHeader(metadata.MD) error { return nil }
func (s *serverStream) SetTrailer(metadata.MD)       {}
func (s *serverStream) Context() context.Context     { return s.ctx }

// SendMsg sends m (not to be modified afterwards) to the client; it fails once the call
// has ended.
func (s *serverStream) SendMsg(m any) error {
	return send(s.ctx, s.st.down, m, s.st.serverDone, status.Error(codes.Canceled, "inproc: the stream's handler has returned"))
}

// RecvMsg receives the client's next message; io.EOF after CloseSend and every message
// sent before it.
func (s *serverStream) RecvMsg(m any) error {
	return receive(s.ctx, s.st.up, m, s.st.share, s.st.upClosed, func() error { return io.EOF })
}

// send puts m on ch unless the stream has ended (ended closed: endErr) or ctx has; an
// ended stream fails a send even when ch has room.
func send(ctx context.Context, ch chan<- proto.Message, m any, ended <-chan struct{}, endErr error) error {
	msg, err := message(m)
	if err != nil {
		return err
	}
	// Single-channel operations first, which the runtime does without taking the locks of
	// every channel of a select (the selects of send and receive were ~4 % of the
	// all-in-one server's CPU in a burn-down). A stream that ended refuses the message even
	// when ch has room.
	select {
	case <-ended:
		return endErr
	default:
	}
	if ctx.Err() != nil {
		return ctxErr(ctx)
	}
	select {
	case ch <- msg:
		return nil
	default:
	}
	select {
	case ch <- msg:
		return nil
	case <-ended:
		return endErr
	case <-ctx.Done():
		return ctxErr(ctx)
	}
}

// receive copies the next message of ch into m. Once closed is closed, the messages
// already on ch still come first, then end's error.
func receive(ctx context.Context, ch <-chan proto.Message, m any, share bool, closed <-chan struct{}, end func() error) error {
	// A message waiting is taken without a select (see send).
	select {
	case msg := <-ch:
		return copyMessage(m, msg, share)
	default:
	}
	select {
	case msg := <-ch:
		return copyMessage(m, msg, share)
	case <-ctx.Done():
		return ctxErr(ctx)
	case <-closed:
	}
	select {
	case msg := <-ch:
		return copyMessage(m, msg, share)
	default:
		return end()
	}
}
