"""Process management for the embedded stack (`mlex-tomo up`)."""
