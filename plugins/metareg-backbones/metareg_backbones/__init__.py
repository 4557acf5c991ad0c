"""First-party metareg backbones."""
