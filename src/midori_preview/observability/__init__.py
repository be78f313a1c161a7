"""What operators see: Prometheus metrics (`metrics.py`, served by `routes.py`), the request
context on every log line (`context.py`), and the provider's calls timed (`provider.py`)."""
