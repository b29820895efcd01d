"""Video and plot files for evaluation and tracking: GIF/MP4 writers, ground truth | generated side by side, plots.

Frames are uint8 (T,H,W,3) throughout. Files are written under a temporary name and renamed into place.

    from training.media import write_gif, write_mp4, side_by_side
    write_mp4(side_by_side(gt, gen, num_context=16), "sample.mp4", fps=8)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


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
                 gap: int = 2, min_size: int = 128) -> np.ndarray:
    """(T,H,W,3) ground truth | generated, generated frames outlined in GENERATED_BORDER_RGB.

    The first `num_context` frames of `generated` are given frames (memory shown as context) and get a blue
    outline instead. Both inputs must have the same shape; the result is upscaled for viewing.
    """
    gt, gen = upscale(_check_frames(ground_truth, "ground_truth"), min_size), upscale(_check_frames(generated, "generated"), min_size)
    if gt.shape != gen.shape:
        raise ValueError(f"side_by_side: ground truth {gt.shape} and generated {gen.shape} differ")
    width = max(2, gt.shape[1] // 32)
    gen = np.concatenate([add_border(gen[:num_context], CONTEXT_BORDER_RGB, width) if num_context else gen[:0],
                          add_border(gen[num_context:], GENERATED_BORDER_RGB, width)], axis=0)
    spacer = np.full((gt.shape[0], gt.shape[1], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([gt, spacer, gen], axis=2)  # (T,H,2W+gap,3)


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


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- plots

def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # not pyplot: no global figure registry

    return Figure(figsize=(5, 3.2))


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
