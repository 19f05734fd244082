"""The canonical manifest: its format, the fail-closed reader, the fast block parser, the
compact table of parsed rows (in memory or memory-mapped files), the stream's chunk
encodings, and class labels."""
