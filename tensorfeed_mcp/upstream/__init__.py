"""The TensorFeed API as this server reads it: the client and its error mapping."""
