"""Smart-DataOps-Copilot: the streaming core (config, schema, cleaning, batches, daemon)."""
