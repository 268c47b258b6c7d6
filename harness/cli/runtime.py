"""`edgebench runtime build`: llama.cpp for a target, cached by content."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from harness.cli.common import console, note, out

if TYPE_CHECKING:
    from harness.runtimes import BuildProgress

app = typer.Typer(no_args_is_help=True, help="Build and inspect llama.cpp runtimes.")


@app.command("build")
def runtime_build(
    target: str = typer.Option("host", help="host, host-cuda, linux-aarch64, android-ndk ..."),
    build_flag: list[str] = typer.Option([], "--build-flag", help="Extra cmake -D flag (repeatable)."),
    force: bool = typer.Option(False, help="Rebuild even when the cache has this key."),
    jobs: Optional[int] = typer.Option(None, "-j", help="Parallel compile jobs (default: CPU count)."),
    ndk: Optional[Path] = typer.Option(None, "--ndk", help="Android NDK for --target android-ndk (default: $ANDROID_NDK_HOME)."),
) -> None:
    """Build the runtime (llama-bench, llama-perplexity; llama-quantize on the host) from the llama.cpp
    source pinned by llama-cpp-python (cached by content)."""
    from harness.runtimes import build_runtime
    from harness.runtimes.targets import effective_target

    build_flag = build_flag + ([f"-DANDROID_NDK={ndk}"] if ndk and target == "android-ndk" else [])
    target, fallback_note = effective_target(target, build_flag)
    if fallback_note:
        note(fallback_note)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("building llama.cpp", total=100)

    def update(event: BuildProgress) -> None:
        progress.update(task, description=escape(f"{event.stage}: {event.line[-60:]}"), completed=event.percent or 0)

    with progress:
        runtime, cached = build_runtime(target, extra_flags=build_flag, force=force, jobs=jobs, on_progress=update)
    m = runtime.manifest
    verdict = "already built (cache hit), nothing to do" if cached else f"built in {m.build_seconds:.0f} s"
    programs = "\n  ".join(str(runtime.root / rel) for rel in sorted(m.files))
    out.print(f"{target}: {verdict}\n  key {m.key}\n  llama.cpp {m.llama_cpp_commit} (llama-cpp-python {m.llama_cpp_python_version})\n  {programs}")
