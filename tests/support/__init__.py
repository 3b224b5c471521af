"""Helpers shared by the test suite: real registries, schema validation, external tools, tiny images."""
