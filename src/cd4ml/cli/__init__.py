"""The cd4ml command line: each command parses its options and delegates.

Commands live in one module per concern; importing a module registers its commands on `app`,
in the order `cd4ml --help` lists them.
"""

from importlib import import_module

from cd4ml.cli.common import app

for _concern in ("pipeline", "registry", "serving", "monitoring"):
    import_module(f"cd4ml.cli.{_concern}")

__all__ = ["app"]
