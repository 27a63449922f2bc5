"""SASS instruction counts of named loops in the sm_90a build of csrc/ (no GPU needed).

How a loop is named: by the kernel it runs in (the demangled template instance, e.g.
``markov_tile_kernel<__nv_bfloat16, __nv_bfloat16, 64>``) and by a chain of source frames,
outermost first: ``(file under csrc/, regex matching where a statement starts)``; the regex
must match once in the file and may span lines (``\n``). The first frame names the loop's
header (or, for code inlined from a header, the call site); each later frame narrows to a
statement inside an inlined function. A frame's line range is the whole statement that
starts at the match (brace-matched), so a loop is named by its header and keeps its name
when its body changes. A name of kind "code" counts every instruction of its frames instead
(the static size of an out-of-line function: one call). Nothing is added to the kernels: the names
live in ``benchmarks/cost_model.py`` next to the formulas that use them.

How it is counted: the build carries line info (``-lineinfo``, as CMakeLists.txt builds),
and ``nvdisasm -gi`` writes each instruction's inlining chain. The instructions whose chain
passes through every named frame, in order, are the loop's instructions. A SASS loop is a
back-edge span (a ``BRA`` to an earlier label: label .. branch); its body is the span minus
the SASS loops nested in it (counted as loops of their own). The named loop's SASS loop is
the one whose body holds most of the named instructions, among bodies that are at least
half named code. Its count is the static size of that body: what one iteration issues when
every branch in it is taken, out-of-line slow paths (``CALL``-ed IEEE division, the divergent-warp
copies of warp collectives behind ``BRA.DIV``) left out.
Where the compiler unrolls, a loop names an anchor (an opcode and how many of it one
source iteration has, e.g. 2 ``HMMA`` per 16-deep WMMA step): the unroll factor is the
anchors in the body over that number, and the work per SASS iteration grows by it.

Tools: ``nvcc`` (CUDA_HOME, else PATH, as setup.py finds it), ``nvdisasm`` and ``cuobjdump`` (PyPI
``nvidia-cuda-nvdisasm`` / ``nvidia-cuda-cuobjdump``, found in the package's ``bin``),
``c++filt`` (binutils) to demangle.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
ARCH = "sm_90a"
CACHE = ROOT / "build" / "cost_model"

# Opcode classes reported next to each loop's count (what a reviewer looks for first).
OPCODE_CLASSES = {
    "MUFU": r"^MUFU\b",  # special-function unit: ex2, lg2, rcp, ...
    "SHFL": r"^SHFL\b",
    "CALL": r"^CALL\b",  # calls to out-of-line slow paths (the called code is not in the body)
    "local": r"^(LDL|STL)\b",  # local memory: spills or runtime-indexed arrays
    "global/generic": r"^(LDG|STG|LD|ST|ATOMG|ATOM|RED)\b",  # generic LD/ST: pointers not known global
    "shared": r"^(LDS|STS|LDSM|ATOMS)\b",
    "cp.async": r"^LDGSTS\b",  # asynchronous global -> shared copies (LDG/LD above: synchronous loads)
    "cp.async wait": r"^(LDGDEPBAR|DEPBAR)\b",  # commit_group, wait_group
    "barrier": r"^(BAR|WARPSYNC|NANOSLEEP)\b",
    "MMA": r"^(HMMA|HGMMA|IMMA|QGMMA|WGMMA)\b",
}


class ToolMissingError(RuntimeError):
    """A tool the SASS reader needs is not installed (the message says which and how)."""


def find_tool(name: str) -> Path | None:
    """A CUDA tool from its PyPI package's bin dir (``nvidia-cuda-<name>``), else CUDA_HOME, else PATH."""
    try:
        files = importlib.metadata.files(f"nvidia-cuda-{name}") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == name and f.parent.name == "bin":
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and (Path(home) / "bin" / name).is_file():
            return Path(home) / "bin" / name
    found = shutil.which(name)
    return Path(found) if found else None


def missing_tools(from_extension: bool = False) -> list[str]:
    """What is missing to read loops (empty when everything is there)."""
    needed = {
        "nvdisasm": "pip install nvidia-cuda-nvdisasm",
        "c++filt": "apt-get install binutils",
    }
    needed["cuobjdump" if from_extension else "nvcc"] = (
        "pip install nvidia-cuda-cuobjdump" if from_extension else "the CUDA toolkit's nvcc"
    )
    missing = []
    for tool, how in needed.items():
        found = shutil.which(tool) if tool == "c++filt" else find_tool(tool)
        if found is None:
            missing.append(f"{tool} ({how})")
    return missing


def _require(name: str) -> Path:
    path = find_tool(name)
    if path is None:
        raise ToolMissingError(f"{name} not found: " + ", ".join(missing_tools()))
    return path


# ---- building the sm_90a cubins -----------------------------------------------------


@dataclass(frozen=True)
class BuildFlags:
    """What CMakeLists.txt compiles: the .cu sources of ``_C``, flags and include dirs."""

    sources: tuple[str, ...]
    flags: tuple[str, ...]
    includes: tuple[str, ...]


def cmake_build_flags(cmake: Path = ROOT / "CMakeLists.txt") -> BuildFlags:
    """Reads the extension's .cu sources, CUDA flags, C++ standard and includes from CMake."""
    text = cmake.read_text(encoding="utf-8")
    module = re.search(r"pybind11_add_module\(\s*_C\s+(.*?)\)", text, re.S)
    if module is None:
        raise ValueError(f"{cmake}: no pybind11_add_module(_C ...)")
    sources = tuple(s for s in module.group(1).split() if s.endswith(".cu"))
    flags: list[str] = []
    for appended in re.findall(r'string\(APPEND\s+CMAKE_CUDA_FLAGS\s+"([^"]*)"\)', text):
        flags += [f for f in appended.split() if not f.startswith("${")]
    std = re.search(r"set\(CMAKE_CUDA_STANDARD\s+(\d+)\)", text)
    flags.append(f"-std=c++{std.group(1) if std else 17}")
    flags += ["-O3", "-DNDEBUG"]  # CMAKE_BUILD_TYPE=Release, as setup.py configures
    includes = tuple(
        i
        for block in re.findall(r"target_include_directories\(\s*_C\s+(.*?)\)", text, re.S)
        for i in block.split()
        if i not in ("PRIVATE", "PUBLIC", "INTERFACE")
    )
    if "-lineinfo" not in flags:
        flags.append("-lineinfo")  # the loop names need line info
    return BuildFlags(sources, tuple(flags), includes)


def _nvcc() -> Path:
    return _require("nvcc")


def _tree_digest(root: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_cubins(csrc: Path = CSRC, cache: Path = CACHE) -> list[Path]:
    """Compiles every .cu of the extension for sm_90a (cached by a digest of csrc/ and flags)."""
    build = cmake_build_flags(csrc.parent / "CMakeLists.txt")
    nvcc = _nvcc()
    version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    out = cache / _tree_digest(csrc, " ".join(build.flags) + version)
    cubins = [out / f"{Path(s).stem}.{ARCH}.cubin" for s in build.sources]
    if all(c.is_file() for c in cubins):
        return cubins
    out.mkdir(parents=True, exist_ok=True)
    arch = ARCH.removeprefix("sm_")
    jobs = []
    for source, cubin in zip(build.sources, cubins, strict=True):
        cmd = [str(nvcc), "-cubin", f"-gencode=arch=compute_{arch},code={ARCH}", *build.flags]
        cmd += [f"-I{csrc.parent / i}" for i in build.includes]
        cmd += [str(csrc.parent / source), "-o", str(cubin) + ".tmp"]
        jobs.append((cubin, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
    for cubin, job in jobs:
        log, _ = job.communicate()
        if job.returncode != 0:
            raise RuntimeError(f"nvcc failed for {cubin.name}:\n{log.decode(errors='replace')[-4000:]}")
        Path(str(cubin) + ".tmp").replace(cubin)
    return cubins


def extension_cubins(extension: Path, out: Path) -> list[Path]:
    """The sm_90a cubins embedded in a built extension (``cuobjdump -xelf``)."""
    cuobjdump = _require("cuobjdump")
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(cuobjdump), "-xelf", ARCH, str(extension.resolve())], cwd=out, check=True, capture_output=True
    )
    cubins = sorted(out.glob(f"*.{ARCH}.cubin"))
    if not cubins:
        raise RuntimeError(f"{extension}: no {ARCH} code in it")
    return cubins


# ---- disassembly ---------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    file: str
    line: int


@dataclass
class Instruction:
    offset: int
    text: str
    frames: tuple[Frame, ...]  # inlining chain, innermost first

    @property
    def opcode(self) -> str:
        return re.sub(r"^@!?U?P\w+\s+", "", self.text).split()[0]


@dataclass
class Function:
    mangled: str
    name: str = ""  # demangled, without return type and arguments
    instructions: list[Instruction] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # label -> index of the next instruction
    # out-of-line functions nvcc placed in this function's section: mangled name -> (first, end)
    subfunctions: dict[str, tuple[int, int]] = field(default_factory=dict)

    def divergent_copies(self) -> set[int]:
        """Instructions of the out-of-line copies nvcc emits for a warp collective it cannot prove
        converged: ``BRA.DIV`` jumps to one (from its label to the first unconditional ``BRA``,
        which returns into the main path). They run only in a diverged warp."""
        copies: set[int] = set()
        for ins in self.instructions:
            m = re.match(r"^BRA\.DIV\s+\S+\s+`\((\.L_x_\d+)\)", ins.text)
            if m and m.group(1) in self.labels:
                i = self.labels[m.group(1)]
                while i < len(self.instructions):
                    copies.add(i)
                    if re.match(r"^BRA\s", self.instructions[i].text):
                        break
                    i += 1
        return copies

    def loops(self) -> list[tuple[int, int]]:
        """Back-edge spans (label index, branch index), one per label, sorted by start. A branch
        back from a divergent copy (``divergent_copies``) is its return, not a loop."""
        ends: dict[int, int] = {}
        copies = self.divergent_copies()
        for i, ins in enumerate(self.instructions):
            m = re.search(r"\bBRA(?:\.\S+)?\s+`\((\.L_x_\d+)\)", ins.text)
            if i in copies:
                continue
            if m and m.group(1) in self.labels and self.labels[m.group(1)] <= i:
                start = self.labels[m.group(1)]
                ends[start] = max(ends.get(start, i), i)
        return sorted(ends.items())


_LINE = re.compile(r'^\s*//## File "([^"]+)", line (\d+)(?: inlined at "[^"]+", line \d+)?')
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*$")
_FUNC = re.compile(r"^\.text\.(\S+):\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_SUBFUNCTION = re.compile(r"^\$[^$\s]+\$(\S+):\s*$")  # $kernel$callee: an out-of-line callee's start


def parse_disassembly(text: str) -> list[Function]:
    """Functions of ``nvdisasm -gi -c`` output with their labels and inlining chains."""
    functions: list[Function] = []
    current: Function | None = None
    chain: tuple[Frame, ...] = ()
    pending: list[Frame] = []
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            current = Function(m.group(1))
            functions.append(current)
            chain, pending = (), []
            continue
        if current is None:
            continue
        m = _LINE.match(line)
        if m:
            pending.append(Frame(m.group(1), int(m.group(2))))
            if "inlined at" not in line:
                chain, pending = tuple(pending), []
            continue
        m = _LABEL.match(line)
        if m:
            current.labels[m.group(1)] = len(current.instructions)
            continue
        m = _SUBFUNCTION.match(line)
        if m:
            _close_subfunction(current)
            current.subfunctions[m.group(1)] = (len(current.instructions), -1)
            continue
        m = _INSTR.match(line)
        if m:
            current.instructions.append(Instruction(int(m.group(1), 16), m.group(2), chain))
    for fn in functions:
        _close_subfunction(fn)
    return functions


def _close_subfunction(fn: Function) -> None:
    """Ends the last open out-of-line callee of ``fn`` at its current instruction count."""
    for name, (first, end) in fn.subfunctions.items():
        if end < 0:
            fn.subfunctions[name] = (first, len(fn.instructions))


def demangle(names: list[str]) -> list[str]:
    """Short demangled names: ``markov_tile_kernel<__nv_bfloat16, __nv_bfloat16, 64>``."""
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        raise ToolMissingError("c++filt not found (binutils)")
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True)
    short = []
    for full in out.stdout.splitlines():
        head = full.replace("(anonymous namespace)", "anon").removeprefix("void ").split("(", 1)[0]
        base, sep, args = head.partition("<")
        short.append(base.rsplit("::", 1)[-1] + sep + args)
    return short


def disassemble(cubins: list[Path]) -> list[Function]:
    """Every function of the cubins, with demangled names."""
    nvdisasm = _require("nvdisasm")
    functions: list[Function] = []
    for cubin in cubins:
        listing = cubin.with_suffix(".sass")  # kept next to a cached cubin
        if listing.is_file() and listing.stat().st_mtime >= cubin.stat().st_mtime:
            text = listing.read_text(encoding="utf-8")
        else:
            text = subprocess.run(
                [str(nvdisasm), "-gi", "-c", str(cubin)], capture_output=True, text=True, check=True
            ).stdout
            partial = listing.with_suffix(".sass.tmp")
            partial.write_text(text, encoding="utf-8")
            partial.replace(listing)
        functions += parse_disassembly(text)
    for fn, name in zip(functions, demangle([f.mangled for f in functions]), strict=True):
        fn.name = name
    return functions


# ---- named loops ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoopName:
    """A loop: its kernel instance and source frames (see the module docstring)."""

    name: str
    kernel: str
    frames: tuple[tuple[str, str], ...]
    per_iteration: int  # work items (vocabulary elements, pairs, ...) one source iteration handles
    unit: str
    # (opcode regex, count per source iteration): the compiler's unroll factor is the number
    # in the SASS body over this count. None: the SASS loop is taken as one source iteration.
    anchor: tuple[str, int] | None = None
    # "loop": a SASS loop (above); "code": every instruction of the named frames, loop or not
    # (straight-line code: an unrolled region or an out-of-line function's static size, what
    # one pass issues with every branch taken); "function": every instruction of the out-of-line
    # callee whose mangled name contains ``callee`` (nvcc's inlining chains inside a callee can
    # lose its own frame, so its frames undercount it; the frames then only locate the source).
    kind: str = "loop"
    callee: str = ""
    # True: among the SASS loops that are mostly its code, take the innermost (one holding no other
    # such loop) rather than the one with the most of its code: a source loop the compiler unrolled
    # into a main loop nested in a loop whose body holds the remainder iterations (and code around it).
    innermost: bool = False


@dataclass(frozen=True)
class LoopCount:
    name: str
    kernel: str
    instructions: int  # static, label .. back-edge, nested loops excluded
    per_iteration: int  # work items one SASS iteration handles (source items x unroll)
    unit: str
    source: str  # file:first-last of each frame
    coverage: float  # share of the named instructions inside the SASS loop body
    opcodes: dict[str, int]
    unroll: int = 1

    @property
    def per_item(self) -> float:
        return self.instructions / self.per_iteration


def statement_lines(path: Path, pattern: str) -> tuple[int, int]:
    """(first, last) 1-based lines of the statement where the one match of pattern starts.

    ``pattern`` is a multi-line regex over the file (``\\n`` spans lines), so a header that
    appears twice can be told apart by the line after it.
    """
    text = path.read_text(encoding="utf-8")
    hits = list(re.finditer(pattern, text, re.M))
    if len(hits) != 1:
        raise LookupError(f"{path.name}: {len(hits)} matches of {pattern!r} (want exactly one)")
    first = text.count("\n", 0, hits[0].start())
    column = hits[0].start() - (text.rfind("\n", 0, hits[0].start()) + 1)
    lines = text.splitlines()
    depth, opened_block = 0, False
    for i in range(first, len(lines)):
        raw = lines[i][column:] if i == first else lines[i]
        code = re.sub(r'"(\\.|[^"\\])*"', '""', raw.split("//")[0])
        for ch in code:
            if ch in "([{":
                opened_block = opened_block or (ch == "{" and depth == 0)
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if ch == "}" and depth == 0 and opened_block:
                    return first + 1, i + 1
            elif ch == ";" and depth == 0:
                return first + 1, i + 1
    raise LookupError(f"{path.name}: the statement at line {first + 1} does not end")


def _in_chain(frames: tuple[Frame, ...], ranges: list[tuple[str, int, int]]) -> bool:
    """Whether the chain (outermost first) passes through every range, in order."""
    k = 0
    for frame in reversed(frames):
        file, lo, hi = ranges[k]
        if frame.file.replace("\\", "/").endswith("/" + file) and lo <= frame.line <= hi:
            k += 1
            if k == len(ranges):
                return True
    return False


def _ranges(loop: LoopName, csrc: Path) -> list[tuple[str, int, int]]:
    return [(file, *statement_lines(csrc / file, pattern)) for file, pattern in loop.frames]


def count_loop(
    functions: list[Function],
    loop: LoopName,
    csrc: Path = CSRC,
    claimed: set[tuple[int, int]] | None = None,
) -> LoopCount:
    """The named loop's static SASS count (raises LookupError naming what is not found).

    ``claimed``: SASS loops of this kernel already taken by more specific named loops (an
    inner source loop); they are not candidates, and the chosen one is added.
    """
    matches = [f for f in functions if f.name == loop.kernel]
    if len(matches) != 1:
        raise LookupError(f"{loop.name}: {len(matches)} functions named {loop.kernel!r}")
    fn = matches[0]
    claimed = set() if claimed is None else claimed
    ranges = _ranges(loop, csrc)
    named = [i for i, ins in enumerate(fn.instructions) if _in_chain(ins.frames, ranges)]
    if not named:
        raise LookupError(f"{loop.name}: no instruction of {loop.kernel} comes from {ranges}")
    if loop.kind == "function":
        return _callee_count(fn, loop, ranges)
    if loop.kind == "code":
        return _straight_count(fn, loop, ranges, named)
    spans = fn.loops()
    named_set = set(named)

    def exclusive(span: tuple[int, int]) -> list[int]:
        inner = [(s, e) for s, e in spans if span[0] <= s and e <= span[1] and (s, e) != span]
        return [i for i in range(span[0], span[1] + 1) if not any(s <= i <= e for s, e in inner)]

    bodies = {span: exclusive(span) for span in spans}
    mostly_named = {
        span: [i for i in body if i in named_set]
        for span, body in bodies.items()
        if span not in claimed and sum(i in named_set for i in body) * 2 >= len(body)
    }
    if not mostly_named:
        raise LookupError(f"{loop.name}: no SASS loop of {loop.kernel} is mostly its code (fully unrolled?)")
    candidates = list(mostly_named)
    if loop.innermost:
        candidates = [
            sp
            for sp in candidates
            if not any(o != sp and sp[0] <= o[0] and o[1] <= sp[1] for o in mostly_named)
        ]
    span = max(candidates, key=lambda sp: len(mostly_named[sp]))
    claimed.add(span)
    body = bodies[span]
    unroll = 1
    if loop.anchor is not None:
        pattern, per_source_iteration = loop.anchor
        anchors = sum(bool(re.match(pattern, fn.instructions[i].opcode)) for i in body)
        if anchors == 0 or anchors % per_source_iteration:
            raise LookupError(
                f"{loop.name}: {anchors} {pattern!r} in the loop body, not a multiple of "
                f"{per_source_iteration}"
            )
        unroll = anchors // per_source_iteration
    ops = Counter()
    for i in body:
        opcode = fn.instructions[i].opcode
        for cls, pattern in OPCODE_CLASSES.items():
            if re.match(pattern, opcode):
                ops[cls] += 1
    file, lo, hi = ranges[0]
    return LoopCount(
        name=loop.name,
        kernel=loop.kernel,
        instructions=len(body),
        per_iteration=loop.per_iteration * unroll,
        unit=loop.unit,
        source=f"{file}:{lo}-{hi}" + "".join(f" > {f}:{a}-{b}" for f, a, b in ranges[1:]),
        coverage=len(mostly_named[span]) / len(named),
        unroll=unroll,
        opcodes=dict(ops),
    )


def _opcode_classes(opcodes: list[str]) -> dict[str, int]:
    ops = Counter()
    for opcode in opcodes:
        for cls, pattern in OPCODE_CLASSES.items():
            if re.match(pattern, opcode):
                ops[cls] += 1
    return dict(ops)


def _callee_count(fn: Function, loop: LoopName, ranges: list[tuple[str, int, int]]) -> LoopCount:
    """An out-of-line callee's static size: every instruction between its label and the next."""
    spans = [span for name, span in fn.subfunctions.items() if loop.callee in name]
    if len(spans) != 1:
        raise LookupError(f"{loop.name}: {len(spans)} callees of {loop.kernel} match {loop.callee!r}")
    first, end = spans[0]
    file, lo, hi = ranges[0]
    return LoopCount(
        name=loop.name,
        kernel=loop.kernel,
        instructions=end - first,
        per_iteration=loop.per_iteration,
        unit=loop.unit,
        source=f"{file}:{lo}-{hi}",
        coverage=1.0,
        opcodes=_opcode_classes([fn.instructions[i].opcode for i in range(first, end)]),
    )


def _straight_count(
    fn: Function, loop: LoopName, ranges: list[tuple[str, int, int]], named: list[int]
) -> LoopCount:
    """A straight-line region: every instruction whose chain passes the frames, in one count."""
    file, lo, hi = ranges[0]
    return LoopCount(
        name=loop.name,
        kernel=loop.kernel,
        instructions=len(named),
        per_iteration=loop.per_iteration,
        unit=loop.unit,
        source=f"{file}:{lo}-{hi}" + "".join(f" > {f}:{a}-{b}" for f, a, b in ranges[1:]),
        coverage=1.0,
        opcodes=_opcode_classes([fn.instructions[i].opcode for i in named]),
    )


def count_named(functions: list[Function], loops: list[LoopName], csrc: Path = CSRC) -> dict[str, LoopCount]:
    """Counts every named loop in these functions, inner source loops first (they claim their
    SASS loop before an enclosing named loop looks for its own): longer frame chains (a loop in
    an inlined function) first, then shorter statements."""
    claimed: dict[str, set[tuple[int, int]]] = {}

    def inner_first(loop: LoopName) -> tuple[int, int]:
        _, lo, hi = _ranges(loop, csrc)[-1]
        return -len(loop.frames), hi - lo

    counts = {}
    for loop in sorted(loops, key=inner_first):
        counts[loop.name] = count_loop(functions, loop, csrc, claimed.setdefault(loop.kernel, set()))
    return {loop.name: counts[loop.name] for loop in loops}


def build_functions(extension: Path | None = None, csrc: Path = CSRC) -> list[Function]:
    """The disassembled sm_90a functions of csrc/ compiled now (default) or of a built extension."""
    if extension is None:
        return disassemble(build_cubins(csrc))
    with tempfile.TemporaryDirectory() as tmp:
        return disassemble(extension_cubins(extension, Path(tmp)))


def count_loops(
    loops: list[LoopName], extension: Path | None = None, csrc: Path = CSRC
) -> dict[str, LoopCount]:
    """Counts every named loop, from csrc/ compiled now (default) or from a built extension."""
    return count_named(build_functions(extension, csrc), loops, csrc)
