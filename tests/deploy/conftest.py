"""The server tests' fixtures (a file store with three tiny tuners, the app in-process) serve here too."""
from tests.server.conftest import run_app, store_url  # noqa: F401
