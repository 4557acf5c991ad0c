"""First-party metareg strategies."""
