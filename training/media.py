"""Video and plot files for evaluation and tracking: GIF/MP4 writers, ground truth | generated side by side, plots.

Frames are uint8 (T,H,W,3) throughout. Files are written under a temporary name and renamed into place.

    from training.media import write_gif, write_mp4, side_by_side
    write_mp4(side_by_side(gt, gen, num_context=16, notes=[...one line per frame...]), "sample.mp4", fps=8)
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.schema import unit_to_pixels

# Colour of the border drawn around generated frames (so a viewer never mistakes them for ground truth).
GENERATED_BORDER_RGB = (255, 64, 32)
CONTEXT_BORDER_RGB = (64, 160, 255)


def _check_frames(frames: np.ndarray, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 (T,H,W,3), got {frames.dtype} {frames.shape}")
    return frames


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Pixels in [-1,1] laid out (T,C,H,W) or (T,H,W,C) -> uint8 (T,H,W,3)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # (T,C,H,W) -> (T,H,W,C)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return unit_to_pixels(x)


def upscale(frames: np.ndarray, min_size: int = 128) -> np.ndarray:
    """Nearest-neighbour upscale by an integer factor so the shorter side is >= min_size (for viewing)."""
    frames = _check_frames(frames)
    factor = max(1, -(-min_size // min(frames.shape[1:3])))
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def pad_even(frames: np.ndarray, multiple: int = 2) -> np.ndarray:
    """Pad H and W up to a multiple (H.264 in yuv420p needs even sizes)."""
    frames = _check_frames(frames)
    h, w = frames.shape[1:3]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return frames


def add_border(frames: np.ndarray, rgb: tuple[int, int, int], width: int = 2) -> np.ndarray:
    """A coloured outline drawn inside each frame's edge (same size out)."""
    out = _check_frames(frames).copy()
    width = max(1, min(width, min(out.shape[1:3]) // 4))
    colour = np.asarray(rgb, dtype=np.uint8)
    out[:, :width], out[:, -width:] = colour, colour
    out[:, :, :width], out[:, :, -width:] = colour, colour
    return out


def side_by_side(ground_truth: np.ndarray, generated: np.ndarray, num_context: int = 0,
                 gap: int = 2, min_size: int = 128, titles: tuple[str, str] = ("ground truth", "generated"),
                 notes: Sequence[str] | None = None) -> np.ndarray:
    """(T,H',W',3) ground truth | generated, captioned, for viewing without the docs.

    The first `num_context` frames of `generated` are given frames (memory shown as context): outlined in
    CONTEXT_BORDER_RGB and captioned "memory (given)"; the generated frames after them are outlined in
    GENERATED_BORDER_RGB and captioned titles[1]. Frames are upscaled (nearest neighbour, integer factor) so the
    shorter side is >= min_size. Below them: `notes[t]` (e.g. the frame's gap d) and a timeline of the T frames,
    memory in blue, generated in red, a white bar where generation starts and the current frame in white.
    Both inputs must have the same shape.
    """
    gt = upscale(_check_frames(ground_truth, "ground_truth"), min_size)
    gen = upscale(_check_frames(generated, "generated"), min_size)
    if gt.shape != gen.shape:
        raise ValueError(f"side_by_side: ground truth {gt.shape} and generated {gen.shape} differ")
    if notes is not None and len(notes) != len(gt):
        raise ValueError(f"side_by_side: {len(notes)} notes for {len(gt)} frames")
    width = max(2, gt.shape[1] // 32)
    gen = np.concatenate([add_border(gen[:num_context], CONTEXT_BORDER_RGB, width) if num_context else gen[:0],
                          add_border(gen[num_context:], GENERATED_BORDER_RGB, width)], axis=0)
    spacer = np.full((gt.shape[0], gt.shape[1], gap, 3), 255, dtype=np.uint8)
    panels = np.concatenate([gt, spacer, gen], axis=2)  # (T,H,2W+gap,3)
    return np.stack([_caption(frame, t, len(panels), num_context, gt.shape[2] + gap, titles,
                              notes[t] if notes is not None else "") for t, frame in enumerate(panels)])


CAPTION_PX = 18   # height of the title bar above and of the note line below the panels
TIMELINE_PX = 8   # height of the timeline strip at the bottom


@functools.lru_cache(maxsize=16)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def _caption(panels: np.ndarray, t: int, num_frames: int, num_context: int, right_x: int,
             titles: tuple[str, str], note: str) -> np.ndarray:
    """One frame of side_by_side: title bar, the panels, the note line and the timeline strip."""
    from PIL import Image, ImageDraw

    h, w = panels.shape[:2]
    canvas = Image.new("RGB", (w, CAPTION_PX + h + CAPTION_PX + TIMELINE_PX), (24, 24, 24))
    canvas.paste(Image.fromarray(panels), (0, CAPTION_PX))
    draw = ImageDraw.Draw(canvas)

    def text(xy, words: str, room: int) -> None:  # the largest size up to CAPTION_PX - 5 that fits `room` pixels
        size = CAPTION_PX - 5
        while size > 7 and draw.textlength(words, font=_font(size)) > room - 8:
            size -= 1
        draw.text(xy, words, fill=(255, 255, 255), font=_font(size))

    given = t < num_context
    draw.rectangle([right_x, 0, w, CAPTION_PX - 1], fill=CONTEXT_BORDER_RGB if given else GENERATED_BORDER_RGB)
    text((4, 2), titles[0], right_x)
    text((right_x + 4, 2), "memory (given)" if given else titles[1], w - right_x)
    text((4, CAPTION_PX + h + 2), note, w)
    top, cell = CAPTION_PX + h + CAPTION_PX, w / num_frames
    for i in range(num_frames):
        colour = (255, 255, 255) if i == t else CONTEXT_BORDER_RGB if i < num_context else GENERATED_BORDER_RGB
        draw.rectangle([int(i * cell), top + (0 if i == t else 2), max(int(i * cell), int((i + 1) * cell) - 2),
                        top + TIMELINE_PX - 1], fill=colour)
    if 0 < num_context < num_frames:  # where memory ends and generation starts
        x = int(num_context * cell) - 1
        draw.rectangle([x - 1, CAPTION_PX + h + CAPTION_PX - 4, x, top + TIMELINE_PX - 1], fill=(255, 255, 255))
    return np.asarray(canvas)


def write_gif(frames: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """Looping GIF (what the MLflow UI shows inline)."""
    import imageio.v3 as iio

    frames, path = _check_frames(frames), Path(path)
    tmp = path.with_name(f".{path.name}.tmp.gif")
    iio.imwrite(tmp, frames, extension=".gif", duration=int(round(1000 / fps)), loop=0)
    os.replace(tmp, path)
    return path


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """H.264 MP4 via imageio-ffmpeg (sizes padded to even)."""
    import imageio.v3 as iio

    frames, path = pad_even(_check_frames(frames)), Path(path)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    iio.imwrite(tmp, frames, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1,
                ffmpeg_log_level="error")
    os.replace(tmp, path)
    return path


MIN_FIGURE_PX = 1000  # saved plots are at least this wide, so text stays readable when shown full width


def save_figure(fig, path: str | Path, dpi: int = 100, min_width_px: int = MIN_FIGURE_PX) -> Path:
    """PNG of a matplotlib Figure, cropped to its content, at >= min_width_px wide (dpi raised if needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    renderer = FigureCanvasAgg(fig).get_renderer()
    width_in = fig.get_tightbbox(renderer).width + 2 * 0.1     # + savefig's pad_inches on each side
    dpi = max(dpi, math.ceil(min_width_px / width_in))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", pad_inches=0.1, format="png")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- plots

def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # not pyplot: no global figure registry

    return Figure(figsize=(10.5, 5.0), layout="constrained")


def plot_bars(values: dict[str, float], title: str, ylabel: str, ylim: tuple[float, float] | None = None):
    """Bar chart of {label: value} (e.g. retrieval by gap bin, paper Table 1). Returns a matplotlib Figure."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    labels = list(values)
    heights = [float(values[k]) if values[k] is not None and np.isfinite(values[k]) else 0.0 for k in labels]
    ax.bar(labels, heights, color="#4c72b0")
    for i, v in enumerate(values.values()):
        ax.text(i, heights[i], "n/a" if v is None or not np.isfinite(v) else f"{v:.3g}", ha="center", va="bottom")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    return fig


def plot_lines(series: dict[str, dict[str, float]], title: str, ylabel: str, xlabel: str = "segment"):
    """Line plot of several {x label: value} series (e.g. PSNR per 16-frame segment, paper Table 3)."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for name, points in series.items():
        xs = list(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend()
    return fig
