"""Build dspark_sgl's CUDA extension for the CPU: the csrc/ kernels and bindings of the CMake build,
compiled by g++ against the emulator (tests/cuemu/include, src/runtime.cpp) into an importable ``_C``.

    python tests/cuemu/build.py [--out DIR] [--csrc DIR] [--cxx g++] [--jobs N] [--debug]

Objects are cached under ``--out`` (default ``build/cuemu``, git-ignored) by a hash of everything
that goes into them: the compiler, the flags, the translated source and the text of every header
it includes. A rerun with nothing changed compiles nothing; a copy of csrc/ with one file changed
(tests/cuemu/mutants.py) recompiles only the units that see the change. Prints the module's path.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
DEFAULT_OUT = ROOT / "build" / "cuemu"
EMULATOR_INCLUDE = HERE / "include"
RUNTIME_SOURCE = HERE / "src" / "runtime.cpp"

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(HERE.parent))
from cuemu.translate import translate  # noqa: E402

_QUOTED_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def compile_flags(csrc: Path, debug: bool = False) -> list[str]:
    """g++ flags of every unit. The numerics flags matter: no contraction of ``a * b + c`` (the
    kernels' ``_rn`` intrinsics are single IEEE operations), no fast-math, no type-based alias
    analysis (the kernels type-pun through ``uint4`` and ``__half2``)."""
    import pybind11

    coverage = ["--coverage", "-fprofile-update=atomic"] if os.environ.get("CUEMU_COVERAGE") == "1" else []
    return [
        "-std=c++17",
        "-fPIC",
        *(["-O0", "-g"] if debug else ["-O2", "-g1"]),
        *coverage,  # CUEMU_COVERAGE=1: gcov line counts of the kernels (see README "The CUDA emulator")
        "-ffp-contract=off",
        "-fno-fast-math",
        "-fno-strict-aliasing",
        "-fvisibility=hidden",
        "-mtls-dialect=gnu2",  # cheap thread_local access from a dlopen()ed module
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
        "-Wno-sign-compare",  # nvcc does not warn about int vs unsigned blockDim comparisons either
        f"-I{EMULATOR_INCLUDE}",
        f"-I{csrc / 'include'}",
        f"-I{pybind11.get_include()}",
        f"-I{sysconfig.get_paths()['include']}",
        '-DDSPARK_SGL_CUDA_ARCHS="cuemu"',
    ]


def _included_headers(text: str, search: list[Path], seen: dict[Path, str]) -> None:
    """Add the quoted includes of ``text`` that resolve under ``search``, transitively, to ``seen``."""
    for name in _QUOTED_INCLUDE.findall(text):
        for directory in search:
            path = directory / name
            if path.is_file():
                if path not in seen:
                    seen[path] = path.read_text()
                    _included_headers(seen[path], [path.parent, *search], seen)
                break


def _unit_key(cxx: str, flags: list[str], text: str, csrc: Path) -> str:
    """Hash of one unit's inputs; the csrc/ location itself is not part of it (a mutant's copy of an
    unchanged unit shares the object of the original)."""
    headers: dict[Path, str] = {}
    _included_headers(text, [csrc / "include"], headers)
    digest = hashlib.sha256()
    digest.update(cxx.encode())
    for flag in flags:
        digest.update(flag.replace(str(csrc), "<csrc>").encode() + b"\0")
    digest.update(text.encode())
    for path in sorted(headers, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + headers[path].encode())
    for path in sorted(EMULATOR_INCLUDE.rglob("*.h")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


_unit_locks: dict[str, threading.Lock] = {}
_unit_locks_guard = threading.Lock()


def _compile(cxx: str, flags: list[str], text: str, stem: str, key: str, objects: Path) -> Path:
    """The cached object of one unit, compiling it if needed (once per key, even when several
    builds of this process want it at the same time)."""
    obj = objects / f"{stem}-{key}.o"
    with _unit_locks_guard:
        lock = _unit_locks.setdefault(obj.name, threading.Lock())
    with lock:
        if obj.exists():
            return obj
        tag = f"{os.getpid()}-{threading.get_ident()}"  # private names: other processes may build too
        source = objects / f"{stem}-{key}.{tag}.cpp"
        partial = objects / f"{stem}-{key}.{tag}.o"
        source.write_text(text)
        cmd = [cxx, *flags, "-c", str(source), "-o", str(partial)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        source.unlink()
        if proc.returncode != 0:
            raise RuntimeError(f"cuemu build failed: {' '.join(cmd)}\n{proc.stderr}")
        partial.replace(obj)  # atomic: a concurrent build never sees half an object
        return obj


def _link_coverage() -> list[str]:
    return ["--coverage"] if os.environ.get("CUEMU_COVERAGE") == "1" else []


def _cuda_unit(path: Path, label: str, flags: list[str]) -> tuple[str, str, list[str]]:
    """A .cu file as a unit: translated, ``#line`` pointing at ``label`` (compiler errors name it)."""
    return (path.stem + ".cu", f'#line 1 "{label}"\n' + translate(path.read_text()), [*flags, "-D__CUDACC__"])


def _runtime_unit(flags: list[str]) -> tuple[str, str, list[str]]:
    return ("cuemu_runtime", f'#line 1 "{RUNTIME_SOURCE}"\n' + RUNTIME_SOURCE.read_text(), flags)


def _build_library(
    units: list[tuple[str, str, list[str]]], out: Path, name: str, csrc: Path, cxx: str, jobs: int | None
) -> Path:
    """Compile ``units`` (stem, text, flags) that are not cached, in parallel, and link ``name``."""
    objects = out / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = [
            pool.submit(_compile, cxx, flags, text, stem, _unit_key(cxx, flags, text, csrc), objects)
            for stem, text, flags in units
        ]
        objs = [f.result() for f in futures]
    link_key = hashlib.sha256("\n".join(o.name for o in objs).encode()).hexdigest()[:20]
    # One directory per object set: a process that loaded one build never sees its file replaced.
    lib = out / "modules" / link_key / name
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        partial = lib.with_name(f"{lib.name}.{os.getpid()}-{threading.get_ident()}.part")
        proc = subprocess.run(
            [cxx, "-shared", *map(str, objs), "-o", str(partial), "-lpthread", *_link_coverage()],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cuemu link failed:\n{proc.stderr}")
        partial.replace(lib)
    return lib


def build(
    out: Path = DEFAULT_OUT,
    csrc: Path = CSRC,
    cxx: str = "g++",
    jobs: int | None = None,
    debug: bool = False,
) -> Path:
    """The emulated extension from ``csrc``: compiles what is not cached, links; returns the path
    of the ``_C`` module."""
    flags = compile_flags(csrc, debug)
    # #line names csrc/<file> relative: a mutant's copy of an unchanged file hashes the same
    units = [_cuda_unit(cu, f"csrc/{cu.name}", flags) for cu in sorted(csrc.glob("*.cu"))]
    units += [
        (cpp.stem, f'#line 1 "csrc/{cpp.name}"\n' + cpp.read_text(), flags)
        for cpp in sorted(csrc.glob("*.cpp"))
    ]
    units.append(_runtime_unit(flags))
    return _build_library(units, out, f"_C{sysconfig.get_config_var('EXT_SUFFIX')}", csrc, cxx, jobs)


def build_standalone(source: Path, out: Path = DEFAULT_OUT, cxx: str = "g++") -> Path:
    """A shared library of one .cu file (kernels plus ``extern "C"`` entry points) and the
    runtime, such as the emulator's self-tests; returns its path."""
    flags = compile_flags(CSRC)
    units = [_cuda_unit(source, str(source), flags), _runtime_unit(flags)]
    return _build_library(units, out, source.stem + ".so", CSRC, cxx, None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--csrc", type=Path, default=CSRC, help="kernel sources (default: csrc/)")
    ap.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    print(build(args.out, args.csrc.resolve(), args.cxx, args.jobs, args.debug))
    return 0


if __name__ == "__main__":
    sys.exit(main())
