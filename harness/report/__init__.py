"""HTML reports: one self-contained file (figures embedded), rebuilt from the store alone."""
