"""First-party metareg transforms built on Kornia."""
