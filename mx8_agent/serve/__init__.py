"""Serving local trainers: the trainer hub, the gRPC servicer and the batch wire format."""
