"""The results store (SQLite or PostgreSQL, one interface), its schema and migrations, the
artifacts kept with each run, and the device leases that make a device exclusive. Below the
run, which writes to it, and analysis, which reads from it."""
