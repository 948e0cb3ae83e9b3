"""Device drivers: one protocol each, turning bytes into typed events and commands into bytes."""
