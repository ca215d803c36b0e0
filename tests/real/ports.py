"""Free TCP ports on the loopback interface, for services the tests start.

Imports nothing from watcher: these helpers stand outside the code under test.
"""

import socket

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    The port is released before returning, so another process may take it before
    the caller binds it; callers that start a separate process retry on
    "address already in use" (see `tests.real.process`).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]

    return port
