"""Plan: suites, the inventory, and the planner -> the concrete cases to run on one device, each
with its threads resolved against the device's cores (cores)."""
