"""The edges of the pipeline: where data comes from (landing folders) and where it lands (PostgreSQL)."""
