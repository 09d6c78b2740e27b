"""Data acquisition, validation and preparation for the sales-forecasting pipeline."""
