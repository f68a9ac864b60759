"""Transport: gRPC servicers, the call interceptor (auth, errors) and protobuf conversion."""
