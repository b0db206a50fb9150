import io

import numpy as np
import pytest
from PIL import Image

from aigi.data.images import BadImage, load_rgb, resize_batch, resize_matrix, to_model_input


def _rng_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("src, dst", [(32, 224), (32, 64), (100, 64), (224, 224)])
def test_resize_matches_pil_bicubic(src, dst):
    img = _rng_image(src, src)
    ours = resize_batch(img[None], dst)[0].numpy().astype(int)
    pil = np.asarray(Image.fromarray(img).resize((dst, dst), Image.BICUBIC)).astype(int)
    # PIL's 22-bit fixed-point weights vs our 15-bit ones: a level or two apart, on about 1% of pixels.
    diff = np.abs(ours - pil)
    assert diff.max() <= 2
    assert (diff > 0).mean() < 0.02


def test_resize_rows_sum_to_one():
    m = resize_matrix(32, 224)
    assert m.shape == (224, 32)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-5)


def test_to_model_input_crops_centre_square_and_keeps_order():
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 255  # the centre square is all white
    small = _rng_image(32, 32)
    out = to_model_input([wide, small, wide], 64)
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
    # The bicubic kernel reaches past the crop's edge (as CLIP's does): only the border columns darken.
    assert out[0][:, 3:-3].min() == 255 and (out[0] == out[2]).all()


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "1"])
def test_odd_modes_become_rgb(mode):
    img = Image.fromarray(_rng_image(16, 16)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "TIFF" if mode == "I;16" else "PNG"
    arr = load_rgb(_encode(img, fmt))
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert (load_rgb(_encode(img, "PNG")) == 255).all()


def test_corrupt_truncated_and_non_images_are_bad(tmp_path):
    jpeg = _encode(Image.fromarray(_rng_image(32, 32)), "JPEG")
    with pytest.raises(BadImage, match="corrupt or truncated"):
        load_rgb(jpeg[: len(jpeg) // 2])
    with pytest.raises(BadImage, match="not a recognised image"):
        load_rgb(b"hello, not an image")
    with pytest.raises(BadImage, match="file not found"):
        load_rgb(tmp_path / "missing.png")


def test_decompression_bomb_is_refused_before_decoding():
    big = _encode(Image.new("L", (3000, 3000)), "PNG")  # tiny file, 9 Mpx
    with pytest.raises(BadImage, match="decompression-bomb guard"):
        load_rgb(big, max_pixels=1_000_000)


def test_large_images_resize_in_bounded_sub_batches(monkeypatch):
    from aigi.data import images

    photos = [_rng_image(120, 90, seed=i) for i in range(5)]
    whole = to_model_input(photos, 32)
    monkeypatch.setattr(images, "RESIZE_PIXELS", 2 * 90 * 90)  # two photos per resize call
    assert (to_model_input(photos, 32) == whole).all()


def test_resize_does_not_depend_on_the_batch():
    # the bytes written by preprocess (and so DVC's hashes) must not depend on how images were chunked
    batch = np.stack([_rng_image(32, 32, seed=i) for i in range(37)])
    together = resize_batch(batch, 224).numpy()
    alone = np.stack([resize_batch(img[None], 224)[0].numpy() for img in batch])
    assert (together == alone).all()


@pytest.mark.parametrize("h, w, size", [(61, 97, 64), (97, 61, 224), (200, 300, 64), (768, 1024, 224), (32, 32, 224)])
def test_any_size_matches_open_clip_preprocess(h, w, size):
    """Shorter side to `size` (antialiased bicubic when shrinking), centre crop: open_clip's own eval transform."""
    import open_clip

    img = _rng_image(h, w, seed=h + w)
    ours = to_model_input([img], size)[0].astype(int)
    tf = open_clip.image_transform(size, is_train=False)
    # Drop the final Normalize and undo ToTensor's /255 to compare 0..255 levels.
    pre = tf.transforms[:-1] if type(tf.transforms[-1]).__name__ == "Normalize" else tf.transforms
    t = Image.fromarray(img)
    for step in pre:
        t = step(t)
    theirs = (t.permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert ours.shape == theirs.shape == (size, size, 3)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_wide_photo_is_cropped_not_squashed():
    wide = np.zeros((60, 120, 3), np.uint8)
    wide[:, 30:90] = 255  # the centre square is white, the sides black
    out = to_model_input([wide], 30)[0]
    # Squashing would make the outer quarters black; the crop leaves white but for the kernel's reach.
    assert out[:, 2:-2].min() == 255 and out.min() > 200


def test_crop_copies_native_pixels_exactly_and_upsamples_small_images():
    from aigi.data.images import model_input

    big, odd, small = _rng_image(70, 90, 1), _rng_image(64, 65, 2), _rng_image(32, 48, 3)
    out = model_input([big, odd, small], 64, resize="crop")
    assert (out[0] == big[3:67, 13:77]).all()  # the centre 64×64, not one level changed
    assert (out[1] == odd[:, :64]).all()
    assert (out[2] == to_model_input([small], 64)[0]).all()  # shorter side under 64: CLIP's resize, as before
    assert (model_input([big, small], 64) == to_model_input([big, small], 64)).all()  # default: shorter_side


def test_jpeg_align_re_encodes_before_the_resize():
    from aigi.data.images import jpeg_align, model_input

    img = _rng_image(40, 40, 4)
    aligned = jpeg_align(img, 70)
    assert aligned.shape == img.shape and not (aligned == img).all()
    assert (jpeg_align(aligned, 70).astype(int) - aligned).std() < (aligned.astype(int) - img).std()  # near-idempotent
    assert (model_input([img], 32, "shorter_side", 70) == to_model_input([aligned], 32)).all()
    assert (model_input([img], 32, "crop", 70) == aligned[4:36, 4:36]).all()
