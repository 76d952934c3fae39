"""Performance benchmarks: gradleak beside breaching, the floor step and the cost curve (see README.md)."""
