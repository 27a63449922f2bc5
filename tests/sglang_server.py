"""A real ``python -m sglang.launch_server`` on the CPU, for the server tests and the CPU benchmark.

:class:`CpuServer` starts SGLang 0.5.23 on 127.0.0.1 and a free port, in its own process
group (``start_new_session``), with the flags every CPU server here gets
(:data:`CPU_FLAGS`), waits for ``/health`` up to a start-up timeout, keeps the server's
output in a log file (its tail goes into every failure message) and is stopped by its
process group (SIGTERM, then SIGKILL), also when the caller fails. Every request has a
timeout.

The server processes import this checkout's ``dspark_sgl`` and the test stand-ins
(``tests/stubs``: ``sgl_kernel``'s CPU ops and torchvision) through ``PYTHONPATH``; the
plugin itself is found through its installed entry points (``pip install -e .``).
``OMP_NUM_THREADS=1``: with the tiny embedded pair, one thread per server process was 10x
faster than torch's default on the 2-core CI machine (0.3 s against 2-8 s for 32 tokens).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "tests" / "stubs"
MODELS = ROOT / "models"

CPU_FLAGS = (
    "--device", "cpu", "--dtype", "float32", "--max-total-tokens", "8192",
    "--cuda-graph-backend-decode", "disabled", "--cuda-graph-backend-prefill", "disabled",
    "--sleep-on-idle",
)  # fmt: skip
DSPARK_FLAGS = ("--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", str(MODELS / "dspark"))

# SGLANG_PLUGINS per configuration: the DSPARK plugin on (both entry points), or only the CPU
# backend, so SGLang's own DSPARK code runs (on the CPU it cannot run without that backend).
PLUGINS_ON = "dspark_sgl,dspark_sgl_cpu"
PLUGINS_OFF = "dspark_sgl_cpu"


# Coding prompts in the embedded pair's domain, encoded as ``dspark_sgl eval`` encodes them.
PROMPTS = (
    "Return the number of vowels in the given string.",
    "Return the sum of a list of integers.",
    "Parse a CSV line into a list of fields.",
    "Return True if the string is a palindrome.",
    "Read a JSON file and return its keys.",
    "Return the n-th Fibonacci number.",
)


def encoded_prompts(texts: tuple[str, ...] = PROMPTS) -> list[list[int]]:
    """``texts`` through the target's chat template (thinking off), as ``dspark_sgl eval`` does."""
    from transformers import AutoTokenizer

    from dspark_sgl.evaluate import encode_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(MODELS / "target"))
    return [encode_prompt(tokenizer, text, True) for text in texts]


def hooks_that_ran(log: str) -> list[str]:
    """The plugin hook names a server log shows running (each hook logs its path once)."""
    import re

    return sorted(set(re.findall(r"dspark_sgl hook (\w+):", log)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(plugins: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a CPU server process: this checkout and the stand-ins first on
    ``PYTHONPATH``, SGLang's CPU engine, ``SGLANG_PLUGINS=plugins``, no hub access."""
    env = dict(os.environ)
    for name in [k for k in env if k.startswith("DSPARK_SGL_")]:
        env.pop(name)
    path = [str(ROOT), str(STUBS), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        SGLANG_USE_CPU_ENGINE="1",
        SGLANG_PLUGINS=plugins,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra or {})
    return env


class ServerError(RuntimeError):
    """The server did not start, died, or answered a request with an error."""


class _PortTakenError(Exception):
    """The server's HTTP port was taken when it bound it (uvicorn's bind error in its log)."""


_BIND_FAILED = "error while attempting to bind on address"


class CpuServer:
    """One SGLang server process group; use :meth:`start` and :meth:`stop` (or ``with``)."""

    def __init__(
        self,
        name: str,
        log_dir: Path,
        *,
        plugins: str,
        speculative: bool,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
        startup_timeout: float = 420.0,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = Path(log_dir) / f"{name}.log"
        self.speculative, self.extra_args = speculative, extra_args
        self.env = server_env(plugins, extra_env)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    def __enter__(self) -> CpuServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _fail(self, what: str) -> ServerError:
        where = f"server {self.name} (port {self.port})"
        return ServerError(f"{where}: {what}; log {self.log_path}:\n{self.log_tail()}")

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sglang.launch_server", "--model-path", str(MODELS / "target"),
            "--host", "127.0.0.1", "--port", str(self.port), *CPU_FLAGS,
            *(DSPARK_FLAGS if self.speculative else ()), *self.extra_args,
        ]  # fmt: skip

    def start(self, attempts: int = 3) -> CpuServer:
        """Launch and wait for ``/health``; raises :class:`ServerError` (after stopping it). A port
        taken between :func:`free_port` and the server's bind (SGLang picks its internal ports at
        start-up too) is not the server's fault: it starts again on another port, ``attempts`` times
        in all."""
        for attempt in range(attempts):
            try:
                return self._start_once()
            except _PortTakenError:
                if attempt == attempts - 1:
                    raise self._fail(f"port taken at bind, {attempts} ports tried") from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> CpuServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=ROOT,  # `python -m` puts the working directory first on sys.path
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        begin = time.monotonic()
        while time.monotonic() - begin < self.startup_timeout:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise self._fail(f"exited with status {code} during start-up")
            if _BIND_FAILED in self.log_text():
                self.stop()
                raise _PortTakenError
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        self.startup_seconds = time.monotonic() - begin
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise self._fail(f"not healthy after {self.startup_timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 30 s; safe to call twice."""
        proc = self.process
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                try:  # the group may outlive its leader for a moment
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def post(self, path: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON reply) of a POST; an HTTP error status is returned, not raised."""
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, {"error": text}
        except (urllib.error.URLError, OSError) as error:
            raise self._fail(f"POST {path} failed: {error}") from error

    def generate(self, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """``/generate`` reply; raises :class:`ServerError` on an error status."""
        status, reply = self.post("/generate", body, timeout)
        if status != 200:
            raise self._fail(f"/generate answered {status}: {reply}")
        return reply
