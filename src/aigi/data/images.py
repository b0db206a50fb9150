"""Decode images to RGB and bring them to the model's input: the one path shared by preprocess, predict,
serving and robustness.

The transform is CLIP's own (open_clip's eval preprocess): resize the shorter side to S, then crop
the centre S×S, so any size and aspect ratio works (32×32 CIFAKE is the upsampling case). Resizing
a batch to a fixed size is a fixed linear map per axis. We build that map from PIL's own
bicubic kernel (a = -0.5, support widened when shrinking, as PIL and so open_clip's preprocessing
do) and apply it as two matrix products, which batches well on CPU and GPU. The result differs from
`PIL.Image.resize(..., BICUBIC)` on about 1% of pixels, by one grey level (rarely two): the two use
fixed-point weights of different precision.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from aigi.params import MAX_IMAGE_PIXELS

INTERPOLATION = "shorter side to S, bicubic (PIL kernel, a=-0.5, antialiased when shrinking), centre S×S crop"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


class BadImage(ValueError):
    """An input that cannot become an RGB image; the message says why."""


RESIZE_PIXELS = 1 << 24  # input pixels per resize call (~200 MB of float32 working memory)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def load_rgb(source: str | Path | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a file path or encoded bytes to an H×W×3 uint8 array.

    Grayscale, palette, CMYK and 16-bit images are converted; transparency is composited on white.
    Raises `BadImage` for anything that is not a decodable image or is larger than `max_pixels`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns before it raises; our own check comes first
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                if img.width * img.height > max_pixels:
                    raise BadImage(
                        f"image is {img.width}x{img.height} = {img.width * img.height:,} pixels, over the "
                        f"{max_pixels:,} limit (decompression-bomb guard)"
                    )
                img.load()
                return _to_rgb(img)
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt or truncated image ({e})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode == "RGB":
        return np.array(img, dtype=np.uint8)  # a copy: the image is closed after this
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.array(img, dtype=np.float64)
        arr = arr / 256.0 if arr.max() > 255 else arr
        return np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


WEIGHT_SCALE = 2.0**15


@lru_cache(maxsize=64)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The out_size×in_size matrix that resamples one axis exactly as PIL's bicubic filter does."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = _bicubic((taps - center + 0.5) / filterscale)
        # Fixed point, as PIL does: weights on a 2^-15 grid (the largest absorbs the rounding, so
        # each row still sums to exactly 1). Every product with a 0..255 pixel, and every partial sum,
        # is then a multiple of 2^-15 below 2^9 (24 bits): exact in float32, in any summation order.
        # So a pixel's value never depends on the batch or chunk it was resized in (nor do the bytes
        # on disk and DVC's hashes), and float32 keeps the matrix products fast.
        q = np.round(w / w.sum() * WEIGHT_SCALE)
        q[np.argmax(np.abs(q))] += WEIGHT_SCALE - q.sum()
        matrix[i, lo:hi] = q / WEIGHT_SCALE
    return matrix.astype(np.float32)


def clip_geometry(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) of CLIP's transform for an h×w image.

    As torchvision's `Resize(size)` then `CenterCrop(size)` (open_clip's eval preprocess): the
    shorter side becomes `size`, the longer one `int(size * long / short)`, and the crop is centred
    with `round()`.
    """
    if h <= w:
        rh, rw = size, int(size * w / h)
    else:
        rh, rw = int(size * h / w), size
    return rh, rw, round((rh - size) / 2.0), round((rw - size) / 2.0)


@lru_cache(maxsize=256)
def crop_matrix(in_size: int, resized: int, start: int, size: int) -> np.ndarray:
    """The rows of the resize matrix that survive the centre crop: resize and crop as one size×in_size map."""
    return np.ascontiguousarray(resize_matrix(in_size, resized)[start : start + size])


@lru_cache(maxsize=256)
def _bands(in_size: int, resized: int, start: int, size: int, block: int = 32) -> tuple[tuple[int, int, int, int], ...]:
    """(first row, end row, first column, end column) of the non-zero band of each block of output rows."""
    nonzero = crop_matrix(in_size, resized, start, size) != 0
    out = []
    for r0 in range(0, size, block):
        cols = np.flatnonzero(nonzero[r0 : r0 + block].any(axis=0))
        out.append((r0, min(r0 + block, size), int(cols[0]), int(cols[-1]) + 1))
    return tuple(out)


def _separable(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray, bands) -> torch.Tensor:
    """N×h×w×3 uint8 -> N×H×W×3 uint8 by `rows` (H×h) and `cols` (W×w), PIL's order and rounding."""
    n, h, _, _ = x.shape
    out_h, out_w = rows.shape[0], cols.shape[0]
    rows_t = torch.from_numpy(rows).to(x.device)  # fixed-point weights: exact in float32
    cols_t = torch.from_numpy(cols).to(x.device)
    # Horizontal pass, then vertical, each rounded and clipped to 0..255 as PIL does between passes.
    # Rows lead (h, N, ...) so the vertical pass, nearly all the work, is a few large matrix products
    # rather than N small ones, and its output is in N×H×W×3 order after one uint8 permute. The
    # bicubic kernel touches 4 input rows per output row: multiplying only each block's band of the
    # matrix skips the zeros (4x less work for 32 -> 224).
    x = x.permute(1, 0, 3, 2).float() @ cols_t.T  # h, N, 3, W
    x = x.round_().clamp_(0, 255).transpose(2, 3).reshape(h, n * out_w * 3)
    out = torch.empty(out_h, n * out_w * 3, device=x.device)
    for r0, r1, c0, c1 in bands:
        torch.mm(rows_t[r0:r1, c0:c1], x[c0:c1], out=out[r0:r1])
    out = out.add_(0.5).clamp_(0, 255).to(torch.uint8)  # +0.5 then truncation: PIL's round-half-up
    return out.view(out_h, n, out_w, 3).permute(1, 0, 2, 3).contiguous()


def resample(batch: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """N×h×w×3 uint8 -> N×height×width×3 uint8 on the input's device, as `PIL.Image.resize((width,
    height), BICUBIC)` (the same matrices as `resize_batch`, without the crop)."""
    x = torch.as_tensor(batch)
    _, h, w, _ = x.shape
    return _separable(x, resize_matrix(h, height), resize_matrix(w, width), _bands(h, height, 0, height))


def resize_batch(batch: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """N×h×w×3 uint8 (all the same shape) -> N×size×size×3 uint8 tensor, on the input's device.

    CLIP's transform: the shorter side resized to `size` (bicubic, antialiased when shrinking), then
    the centre size×size crop; the crop is folded into the resize matrices, so no work is spent on
    pixels that are cropped away.
    """
    x = torch.as_tensor(batch)
    _, h, w, _ = x.shape
    if (h, w) == (size, size):
        return x
    rh, rw, top, left = clip_geometry(h, w, size)
    return _separable(x, crop_matrix(h, rh, top, size), crop_matrix(w, rw, left, size), _bands(h, rh, top, size))


def to_model_input(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Any-size RGB images -> N×size×size×3 uint8 by CLIP's transform (shorter side to `size`, centre crop)."""
    return to_model_tensor(images, size, torch.device("cpu")).numpy()


def to_model_tensor(images: Sequence[np.ndarray | torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """`to_model_input` on `device`: H×W×3 uint8 arrays or tensors (e.g. decoded on the GPU) ->
    N×size×size×3 uint8 tensor there. The same matrices on every device, so the same pixels."""
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape), []).append(i)  # equal sizes share one batch of matrix products
    for shape, idx in by_shape.items():
        # Resize in sub-batches of at most RESIZE_PIXELS input pixels: the float copy of a batch of
        # large photos would otherwise take gigabytes.
        step = max(1, RESIZE_PIXELS // (shape[0] * shape[1]))
        for i in range(0, len(idx), step):
            part = idx[i : i + step]
            if all(isinstance(images[j], np.ndarray) for j in part):
                batch = torch.from_numpy(np.stack([images[j] for j in part])).to(device)  # a copy: writable
            else:
                batch = torch.stack([_tensor(images[j]).to(device) for j in part])
            if len(part) == len(images):
                return resize_batch(batch, size)  # one shape, one sub-batch: the usual case, no copy
            out.index_copy_(0, torch.tensor(part, device=device), resize_batch(batch, size))
    return out


def _tensor(img: np.ndarray | torch.Tensor) -> torch.Tensor:
    return img if isinstance(img, torch.Tensor) else torch.from_numpy(np.array(img))  # a copy: writable


JPEG_MAGIC = b"\xff\xd8\xff"


def decode_images(
    paths: Sequence[str | Path], device: torch.device, max_pixels: int = MAX_IMAGE_PIXELS, gpu_jpeg: bool | None = None,
) -> list[np.ndarray | torch.Tensor | BadImage]:
    """Decode files for `to_model_tensor`: per path an H×W×3 uint8 array or tensor, or the `BadImage` why not.

    On CUDA, baseline RGB or greyscale JPEGs are decoded in one batch on the GPU (torchvision's nvJPEG
    path) into tensors there; every other file, and any JPEG the GPU decoder refuses, goes through
    `load_rgb` (PIL), quietly. Without a GPU this is `load_rgb` per file. The size guard
    (`max_pixels`) is read from the header before anything is decoded. `gpu_jpeg` forces the
    torchvision decoder on (on `device`, CPU included) or off; None = on for CUDA.
    """
    use_tv = device.type == "cuda" if gpu_jpeg is None else gpu_jpeg
    out: list[np.ndarray | torch.Tensor | BadImage | None] = [None] * len(paths)
    jpegs: list[tuple[int, torch.Tensor]] = []
    for i, path in enumerate(paths):
        data = _jpeg_bytes(path, max_pixels) if use_tv else None
        if data is None:
            out[i] = _load_or_reason(path, max_pixels)
        else:
            jpegs.append((i, data))
    if jpegs:
        for (i, _), img in zip(jpegs, _decode_jpegs([d for _, d in jpegs], device), strict=True):
            out[i] = img.permute(1, 2, 0) if img is not None else _load_or_reason(paths[i], max_pixels)
    return out  # type: ignore[return-value]


def _load_or_reason(path: str | Path, max_pixels: int) -> np.ndarray | BadImage:
    try:
        return load_rgb(path, max_pixels)
    except BadImage as e:
        return e


def _jpeg_bytes(path: str | Path, max_pixels: int) -> torch.Tensor | None:
    """The file as a uint8 tensor if it is a JPEG torchvision decodes as PIL does (RGB or greyscale,
    within `max_pixels`); None sends it to `load_rgb`, which also reports every kind of bad file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(JPEG_MAGIC):
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:  # header only: size and colour mode
                if img.format != "JPEG" or img.mode not in ("RGB", "L") or img.width * img.height > max_pixels:
                    return None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """3×H×W uint8 tensors on `device`, one batched call; one by one if the batch fails, None for those that do."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a refused file is decoded by PIL instead, which reports real problems
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for data in datas:
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


# ---- the preprocess mitigations (preprocess.jpeg_align, preprocess.resize), saved with the model ------------

RESIZE_MODES = ("shorter_side", "crop")
CROP = "native pixels: the centre S×S of images at least S on each side; smaller ones as shorter_side"


def jpeg_align(img: np.ndarray, quality: int) -> np.ndarray:
    """Re-encode an RGB image as JPEG at `quality` and decode it again (PIL, 4:2:0 as libjpeg's default).

    Applied to every image of every class before the resize, it leaves the container nothing to say:
    a PNG and a JPEG of the same scene come out as the same kind of JPEG.
    """
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    with Image.open(buf) as out:
        return np.array(out.convert("RGB"), dtype=np.uint8)


def centre_crop(img: np.ndarray | torch.Tensor, size: int) -> np.ndarray | torch.Tensor:
    """The centre size×size pixels of an image at least `size` on each side, copied as they are."""
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    crop = img[top : top + size, left : left + size]
    return np.ascontiguousarray(crop) if isinstance(crop, np.ndarray) else crop


def _host(img: np.ndarray | torch.Tensor) -> np.ndarray:
    return img.cpu().numpy() if isinstance(img, torch.Tensor) else img


def model_input(images: Sequence[np.ndarray | torch.Tensor], size: int, resize: str = "shorter_side",
                jpeg_quality: int | None = None, device: torch.device | None = None) -> np.ndarray | torch.Tensor:
    """Decoded RGB images -> N×size×size×3 uint8 as the model saw them in training (its saved transform):
    a tensor on `device` when given (the resize runs there), else a numpy array.

    `jpeg_quality` (preprocess.jpeg_align): re-encode each image as JPEG first. `resize`: `shorter_side`
    is `to_model_tensor` (CLIP's transform); `crop` takes the centre size×size at native resolution
    from images at least `size` on each side (no resampling, so high-frequency traces survive) and
    brings smaller ones up by `to_model_tensor`.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    if jpeg_quality is not None:
        images = [jpeg_align(_host(img), jpeg_quality) for img in images]
    on = device if device is not None else torch.device("cpu")
    large = [i for i, img in enumerate(images) if min(img.shape[:2]) >= size] if resize == "crop" else []
    if not large:
        out = to_model_tensor(images, size, on)
    else:
        out = torch.empty((len(images), size, size, 3), dtype=torch.uint8, device=on)
        for i in large:
            out[i] = _tensor(centre_crop(images[i], size)).to(on)
        small = sorted(set(range(len(images))) - set(large))
        if small:
            out[small] = to_model_tensor([images[i] for i in small], size, on)
    return out if device is not None else out.numpy()


