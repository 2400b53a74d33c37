"""The sandbox that stands in for the TensorFeed API."""
