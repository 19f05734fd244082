"""gRPC shared by the daemons and clients: the generated mx8.v1 code, channel security and
the coordinator client."""
