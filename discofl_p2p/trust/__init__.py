"""Trust logic as pure functions: contribution scoring and reward policies. No I/O."""
