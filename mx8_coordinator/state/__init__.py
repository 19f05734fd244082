"""The job's state, free of transport: node registry, lease scheduler, durable lease log (a
local file, or segments in a store with leader terms: ``store_log``, ``leader``) and the
Job that ties them together."""
