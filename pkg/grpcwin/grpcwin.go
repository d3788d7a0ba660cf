// Package grpcwin gives agentserver's gRPC servers and clients static HTTP/2 flow-control
// windows.
//
// With its default dynamic windows, grpc-go estimates the bandwidth-delay product by
// sending a PING (and a connection WINDOW_UPDATE) whenever data arrives while no such ping
// is outstanding, on both ends of a connection. Under a steady stream of small calls
// (CreateRun, the worker's stream) that is about one ping round trip per call or two:
// agentctl bench's sustained workload made 1.14 read and 0.77 write syscalls per run with
// them and 0.72 and 0.51 without (/proc/PID/io). agentserver's messages are small and its
// links short, so windows fixed large enough for its largest request lose nothing.
package grpcwin

import "google.golang.org/grpc"

const (
	// StreamWindow is each stream's flow-control window: a request or response up to
	// this size never waits for a window update.
	StreamWindow = 1 << 20
	// ConnWindow is each connection's window, shared by its streams.
	ConnWindow = 16 << 20
)

// ServerOptions are the static windows of a server.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.StaticStreamWindowSize(StreamWindow), grpc.StaticConnWindowSize(ConnWindow)}
}

// DialOptions are the static windows of a client connection. Put them before options of
// the caller's, which then win.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithStaticStreamWindowSize(StreamWindow), grpc.WithStaticConnWindowSize(ConnWindow)}
}
