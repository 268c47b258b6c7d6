"""Plan: suites, inventory, cases and cores -> the concrete cases to run on one device."""
