"""cd4ml: Continuous Delivery for Machine Learning, for sales forecasting."""

__version__ = "0.1.0"
