"""The one build step pyproject.toml cannot say: ship migrations/ and web/ inside the wheel.

They live at the top of the repository (Alembic and the web map are edited there); a
wheel installed anywhere must still find them, so they are copied into the package as
swarmwatch/_packaged/ at build time. An editable install reads them from the checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Folders the package needs at run time (swarmwatch.shipped() finds them).
SHIPPED = ("migrations", "web")


class BuildPyWithShippedFolders(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            target = Path(self.build_lib) / "swarmwatch" / "_packaged" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(
                ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )


setup(cmdclass={"build_py": BuildPyWithShippedFolders})
