"""remote_dev: edit locally, run remotely."""
__version__ = "0.1.0"
