"""The canonical manifest: its format, the fail-closed reader, the fast block parser, the
compact table of parsed rows, and class labels."""
