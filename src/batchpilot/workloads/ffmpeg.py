"""What the tutorial's job needs around its workload file (ffmpeg.toml): ffmpeg itself, and sample MP4s.

On Azure the nodes get ffmpeg from the tutorial's start task (apt-get). On this machine it comes with `pip
install`: imageio-ffmpeg ships a static binary, which `tool_dir` exposes under the name `ffmpeg` so that the
same command line runs on both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import anyio

from ..errors import ConfigError, ToolNotFoundError

# The workload itself is data, shipped with the package; examples/ffmpeg.toml is its documented copy.
WORKLOAD_FILE = Path(__file__).with_name("ffmpeg.toml")
_FFMPEG_ENV = "BATCHPILOT_FFMPEG"


def find_ffmpeg() -> Path:
    """The ffmpeg binary: $BATCHPILOT_FFMPEG, else the one imageio-ffmpeg ships, else one on PATH."""
    if configured := os.environ.get(_FFMPEG_ENV):
        if not os.access(configured, os.X_OK):
            raise ToolNotFoundError(f"{_FFMPEG_ENV}={configured} is not an executable file; fix or unset it")
        return Path(configured)
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        pass
    if found := shutil.which("ffmpeg"):
        return Path(found)
    raise ToolNotFoundError(
        f"ffmpeg not found: `pip install imageio-ffmpeg` (a dependency of batchpilot), or set {_FFMPEG_ENV}"
    )


def tool_dir(cache: Path) -> Path:
    """A folder holding `ffmpeg` (a link to the bundled binary), to put first on the tasks' PATH."""
    binary = find_ffmpeg()
    folder = cache / "tools"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "ffmpeg"
    if not link.exists() or link.resolve() != binary.resolve():
        temporary = folder / f".ffmpeg.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(binary)
        os.replace(temporary, link)
    return folder


# Each clip is made with ffmpeg on this machine and kept in the state folder.
MAX_SAMPLES = 1000


async def make_samples(count: int, folder: Path, *, seconds: float = 3.0) -> tuple[Path, ...]:
    """`count` short MP4s (a tone over a black frame), each with its own pitch. Existing ones are kept, so
    the same `--sample N` command resumes."""
    if count < 1:
        raise ConfigError("--sample needs a number of files of at least 1")
    if count > MAX_SAMPLES:
        raise ConfigError(f"--sample {count:,}: at most {MAX_SAMPLES:,} clips; put more inputs in a folder")
    ffmpeg = find_ffmpeg()
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    paths = tuple(folder / f"sample-{index:03d}.mp4" for index in range(1, count + 1))
    limiter = anyio.CapacityLimiter(os.cpu_count() or 2)

    async def make(index: int, path: Path) -> None:
        if await anyio.Path(path).exists():
            return
        partial = path.with_name(f".{path.name}.partial.mp4")
        async with limiter:
            await anyio.run_process(
                [
                    str(ffmpeg), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"sine=frequency={220 + 40 * index}:duration={seconds}",
                    "-f", "lavfi", "-i", f"color=c=black:s=64x64:d={seconds}:r=10",
                    "-shortest", "-c:v", "libx264", "-c:a", "aac", str(partial),
                ]
            )  # fmt: skip
        await anyio.Path(partial).rename(path)

    async with anyio.create_task_group() as group:
        for index, path in enumerate(paths, start=1):
            group.start_soon(make, index, path)
    return paths


@dataclass(frozen=True, slots=True)
class MediaInfo:
    duration_s: float | None
    audio_codec: str | None
    has_video: bool


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_AUDIO = re.compile(r"Stream #\S+.*?: Audio: (\w+)")


def media_info(path: Path, *, ffmpeg: Path | None = None) -> MediaInfo:
    """What ffmpeg reads in a media file (duration, audio codec, video present). Blocking; for checks."""
    completed = subprocess.run(
        [str(ffmpeg or find_ffmpeg()), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    text = completed.stderr
    duration = None
    if match := _DURATION.search(text):
        hours, minutes, seconds = match.groups()
        duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    audio = _AUDIO.search(text)
    return MediaInfo(duration, audio.group(1) if audio else None, ": Video:" in text)
