"""Prediction log, drift and quality monitoring, and the controller that acts on them."""
