"""Serve a module's Dash ``app`` on a port: ``python -m tests.dash_apps.serve MODULE --port N``.

The module is imported by name (not run as ``__main__``), as a worker process imports it.
"""

from __future__ import annotations

import argparse
import importlib

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("module")
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    importlib.import_module(options.module).app.run(port=options.port)
