"""Benchmarks: commands that print figures (`discofl-p2p bench NAME`), never timed tests."""
