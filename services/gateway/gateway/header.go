package gateway

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// GatewayHeader is the response header (gRPC metadata; Grpc-Metadata-X-Agentserver-Gateway
// over REST) naming the gateway instance that answered, so clients and tests can see
// where a load balancer or a consistent-hash client sent a call.
const GatewayHeader = "x-agentserver-gateway"

// unaryGatewayHeader adds GatewayHeader to every unary response, errors included.
func unaryGatewayHeader(id string) grpc.UnaryServerInterceptor {
	md := metadata.Pairs(GatewayHeader, id)
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, md)
		return handler(ctx, req)
	}
}

// streamGatewayHeader adds GatewayHeader to every stream's response headers.
func streamGatewayHeader(id string) grpc.StreamServerInterceptor {
	md := metadata.Pairs(GatewayHeader, id)
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		_ = ss.SetHeader(md)
		return handler(srv, ss)
	}
}
