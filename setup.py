"""Builds the optional native extension ``_fastjob``.

If Cython or a C compiler is missing, or FASTJOB_NO_EXTENSIONS=1 is set, the
pure-Python package is installed instead (fastjob.NATIVE is then False).
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _say(message: str) -> None:
    print(f"fastjob: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A failed extension build degrades to the pure-Python package."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure
            _say(f"native extension not built ({exc}); installing the pure-Python fallback")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _say(f"native extension not built ({exc}); installing the pure-Python fallback")
            return
        self._install_stub(ext)

    def _install_stub(self, ext: Extension) -> None:
        """Put the type stub (src/<name>.pyi) beside the built extension, so
        wheels carry it; only when the extension itself was built."""
        stub = os.path.join("src", ext.name.replace(".", os.sep) + ".pyi")
        target = os.path.join(
            os.path.dirname(self.get_ext_fullpath(ext.name)), os.path.basename(stub)
        )
        if os.path.exists(stub) and os.path.abspath(stub) != os.path.abspath(target):
            self.copy_file(stub, target)


def _extensions() -> list:
    if os.environ.get("FASTJOB_NO_EXTENSIONS", "") not in ("", "0"):
        _say("FASTJOB_NO_EXTENSIONS is set; installing the pure-Python package")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython is not available; installing the pure-Python fallback")
        return []
    ext = Extension(
        "_fastjob",
        sources=["src/_fastjob.pyx"],
        include_dirs=["src"],
        depends=["src/fastjob_io.h", "src/fastjob_io_win.h"],
        # No debug info in release builds: it is 2/3 of the wheel.
        extra_compile_args=[] if os.name == "nt" else ["-g0"],
    )
    return cythonize([ext], language_level=3, quiet=True)


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    package_data={"": ["py.typed"]},
)
