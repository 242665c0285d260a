"""Test support shared by tests and tools: tiny random checkpoints built locally."""
