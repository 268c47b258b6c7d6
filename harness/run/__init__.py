"""Run: a session prepares, stages and executes a plan on one device, storing each process."""
