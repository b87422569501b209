"""Command-line entry points: argument parsing only; the work is done by the package's modules."""
