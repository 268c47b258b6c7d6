"""Lab: many devices, many runs."""
