"""First-party metareg datasets."""
