"""remote_dev: edit locally, run remotely."""
from . import library_warnings

__version__ = "0.1.0"

# before any module imports asyncssh and friends: their warnings go to the log, not the screen
library_warnings.install()
