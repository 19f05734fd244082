"""Leases: taking them from the coordinator, fetching, and tracking trainers' acknowledgements."""
