"""The coordinator's gRPC face: the servicer and manifest streaming."""
