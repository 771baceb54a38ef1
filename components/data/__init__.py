"""Data stages: sources (raw tables with provenance), curate (normalise, deduplicate, filter, split), validate (GX)."""
