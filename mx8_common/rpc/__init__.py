"""gRPC shared by the daemons and clients: the generated mx8.v1 code, the daemon base
(``daemon``), client channels (``channels``), the error boundary (``errors``), channel
security and the coordinator client."""
