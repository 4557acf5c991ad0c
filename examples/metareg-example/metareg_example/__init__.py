"""An example third-party metareg plugin."""
