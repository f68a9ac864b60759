"""The benchmark harness: ``python -m bench SCENARIO ... [--quick] [--out DIR]`` (see bench/cli.py)."""
