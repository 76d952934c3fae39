"""Benchmarks of gradleak (not part of the package); run the scripts from the repository root."""
