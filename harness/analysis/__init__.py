"""Analysis: everything derived from stored metrics only (tables, statistics over processes,
compare, roofline, claims, the quality frontier). It reads the store and never a device."""
