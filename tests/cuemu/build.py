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

    return [
        "-std=c++17",
        "-fPIC",
        *(["-O0", "-g"] if debug else ["-O2", "-g1"]),
        "-ffp-contract=off",
        "-fno-fast-math",
        "-fno-strict-aliasing",
        "-fvisibility=hidden",
        "-mtls-dialect=gnu2",  # cheap thread_local access from a dlopen()ed module
        "-Wall",
        "-Wno-unused-function",
        "-Wno-unknown-pragmas",
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


def _compile(cxx: str, flags: list[str], text: str, stem: str, key: str, objects: Path) -> Path:
    obj = objects / f"{stem}-{key}.o"
    if obj.exists():
        return obj
    source = objects / f"{stem}-{key}.cpp"
    source.write_text(text)
    partial = obj.with_suffix(".o.part")
    cmd = [cxx, *flags, "-c", str(source), "-o", str(partial)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuemu build failed: {' '.join(cmd)}\n{proc.stderr}")
    partial.replace(obj)  # atomic: a concurrent build never sees half an object
    return obj


def build(
    out: Path = DEFAULT_OUT,
    csrc: Path = CSRC,
    cxx: str = "g++",
    jobs: int | None = None,
    debug: bool = False,
) -> Path:
    """Compile what is not cached and link; returns the path of the ``_C`` module."""
    objects = out / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    flags = compile_flags(csrc, debug)
    units: list[tuple[str, str, list[str]]] = []  # (stem, text, flags)
    for cu in sorted(csrc.glob("*.cu")):
        # #line keeps compiler errors pointing at csrc/ (relative: a mutant's copy hashes the same)
        text = f'#line 1 "csrc/{cu.name}"\n' + translate(cu.read_text())
        units.append((cu.stem + ".cu", text, [*flags, "-D__CUDACC__"]))
    for cpp in sorted(csrc.glob("*.cpp")):
        units.append((cpp.stem, f'#line 1 "csrc/{cpp.name}"\n' + cpp.read_text(), flags))
    units.append(("cuemu_runtime", f'#line 1 "{RUNTIME_SOURCE}"\n' + RUNTIME_SOURCE.read_text(), flags))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = [
            pool.submit(
                _compile, cxx, unit_flags, text, stem, _unit_key(cxx, unit_flags, text, csrc), objects
            )
            for stem, text, unit_flags in units
        ]
        objs = [f.result() for f in futures]
    link_key = hashlib.sha256("\n".join(o.name for o in objs).encode()).hexdigest()[:20]
    # One directory per object set: a process that loaded one build never sees its file replaced.
    lib = out / "modules" / link_key / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        partial = lib.with_name(lib.name + ".part")
        proc = subprocess.run(
            [cxx, "-shared", *map(str, objs), "-o", str(partial), "-lpthread"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"cuemu link failed:\n{proc.stderr}")
        partial.replace(lib)
    return lib


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
