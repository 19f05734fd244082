"""gRPC shared by the daemons and clients: the generated mx8.v1 code, the daemon base
(``daemon``), client channels (``channels``), the error boundary (``errors``), channel
security, the coordinator client, and ``JobStatus`` (the job's status, plain) with its
proto conversion."""
