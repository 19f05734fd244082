"""mx8-coordinator: the head-node daemon that owns a job's snapshot and leases work."""

__all__: list[str] = []
