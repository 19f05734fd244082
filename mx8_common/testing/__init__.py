"""Helpers that start real local servers for tests, demos and benchmarks."""
