"""HTTP resources: thin classes that parse, call domain code, and answer."""
