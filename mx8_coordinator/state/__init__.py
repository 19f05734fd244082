"""The job's state, free of transport: node registry, lease scheduler, durable lease log and
the Job that ties them together."""
