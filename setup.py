"""Build script: the pure-Python package, plus the CUDA extension ``dspark_sgl._C``.

``DSPARK_SGL_BUILD_CUDA``: unset/``auto`` builds the extension when ``nvcc`` is
found (a failed compile is an error), ``0`` never builds it, ``1`` requires it.
``DSPARK_SGL_CUDA_ARCHS`` (default ``90a;90``) picks the SM targets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _build_mode() -> str:
    mode = os.environ.get("DSPARK_SGL_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"DSPARK_SGL_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    return mode


def _find_nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    return shutil.which("nvcc")


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Builds ``dspark_sgl._C`` with CMake, or skips it (with a message) when told to."""

    def run(self) -> None:
        mode = _build_mode()
        nvcc = _find_nvcc()
        if mode == "0" or (mode == "auto" and nvcc is None):
            why = "DSPARK_SGL_BUILD_CUDA=0" if mode == "0" else "nvcc was not found"
            print(
                f"dspark-sgl: {why}; installing the pure-Python package (PyTorch reference kernels only)",
                file=sys.stderr,
            )
            return
        if nvcc is None:
            raise SystemExit("dspark-sgl: DSPARK_SGL_BUILD_CUDA=1 but nvcc was not found")
        if shutil.which("cmake") is None:
            raise SystemExit(
                "dspark-sgl: building the CUDA extension needs cmake >= 3.22 "
                "(or set DSPARK_SGL_BUILD_CUDA=0 for the pure-Python package)"
            )
        self._nvcc = nvcc
        super().run()

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        ext_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        archs = os.environ.get("DSPARK_SGL_CUDA_ARCHS", "90a;90")
        config = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={ext_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={self._nvcc}",
            f"-DDSPARK_SGL_CUDA_ARCHS={archs}",
            f"-DDSPARK_SGL_CUDA_PTX={os.environ.get('DSPARK_SGL_CUDA_PTX', '90')}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if shutil.which("ninja"):
            config += ["-G", "Ninja"]
        jobs = str(max(1, os.cpu_count() or 1))
        print(f"dspark-sgl: building the CUDA extension for sm {archs} with {self._nvcc}", file=sys.stderr)
        subprocess.run(config, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("dspark_sgl._C")],
    cmdclass={"build_ext": CMakeBuild},
)
