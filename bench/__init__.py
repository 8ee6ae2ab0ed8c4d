"""Benchmark suite: the gateway against peer WebSocket servers on the same machine (see bench/README.md)."""
