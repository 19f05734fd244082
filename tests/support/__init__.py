"""Helpers shared by the test packages: real servers, datasets, polling."""
