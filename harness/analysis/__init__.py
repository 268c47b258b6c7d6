"""Results: the store, its records, and everything derived from stored metrics only."""
