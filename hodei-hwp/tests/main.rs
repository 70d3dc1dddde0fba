//! The server's integration tests as one test binary, a module per
//! subject: the engine on real stores, and the gRPC services over TCP.

mod engine;
mod grpc;
