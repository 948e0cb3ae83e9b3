"""Simulated devices at their real boundary, shared by the demo, `hallhub simulate` and the tests."""
