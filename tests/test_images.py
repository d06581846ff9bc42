"""images.resize_jpeg: exact sizes, EXIF upright, every colour mode to RGB, draft decode, bombs, corrupt input,
determinism."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin
from pydantic import ValidationError

from skincancer.core.images import PILLOW_MAX_PIXELS, CorruptImage, Resized, resize_jpeg
from skincancer.core.params import ShardParams

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _jpeg(img: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def _halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows which way an image was turned."""
    img = Image.new("RGB", (width, height), BLUE)
    img.paste(RED, (0, 0, width // 2, height))
    return img


def _open(result: Resized) -> Image.Image:
    img = Image.open(io.BytesIO(result.data))
    img.load()
    return img


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("shape", [(50, 30), (30, 50), (40, 40), (10, 7)])
def test_output_is_exact_square_jpeg(mode: str, shape: tuple[int, int]) -> None:
    result = resize_jpeg(_jpeg(_halves(*shape)), 24, mode, 90)
    img = _open(result)
    assert img.format == "JPEG" and img.mode == "RGB"
    assert img.size == (24, 24) == (result.width, result.height)


def test_crop_takes_the_centre_square() -> None:
    img = Image.new("RGB", (90, 30), RED)
    img.paste(BLUE, (30, 0, 60, 30))  # the centre square is blue, the sides red
    out = _open(resize_jpeg(_jpeg(img), 16, "crop", 95))
    # The outermost columns may pick up a trace of red through the filter's support, nothing more.
    assert all(_near(out.getpixel((x, y)), BLUE) for x in range(1, 15) for y in range(16))


def test_pad_keeps_aspect_on_black() -> None:
    out = _open(resize_jpeg(_jpeg(Image.new("RGB", (80, 40), RED)), 32, "pad", 95))
    assert _near(out.getpixel((16, 2)), (0, 0, 0))  # band above the 32x16 content
    assert _near(out.getpixel((16, 29)), (0, 0, 0))  # band below
    assert _near(out.getpixel((1, 16)), RED) and _near(out.getpixel((30, 16)), RED)


def test_exif_orientation_6_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    data = _jpeg(_halves(60, 30), exif=exif.tobytes())
    out = _open(resize_jpeg(data, 20, "crop", 95))
    # Upright, the red left half is on top and the blue right half at the bottom.
    assert _near(out.getpixel((2, 2)), RED) and _near(out.getpixel((17, 2)), RED)
    assert _near(out.getpixel((2, 17)), BLUE) and _near(out.getpixel((17, 17)), BLUE)
    assert "exif" not in out.info


def test_exif_rotation_changes_pad_bands() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    out = _open(resize_jpeg(_jpeg(Image.new("RGB", (60, 30), RED), exif=exif.tobytes()), 30, "pad", 95))
    # 60x30 stored becomes 30x60 upright: bands left and right, not top and bottom.
    assert _near(out.getpixel((2, 15)), (0, 0, 0)) and _near(out.getpixel((27, 15)), (0, 0, 0))
    assert _near(out.getpixel((15, 2)), RED)


def _encoded(img: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format)
    return buffer.getvalue()


def _palette(transparent: bool) -> Image.Image:
    """Index 0 on the left half, 1 (red) on the right; index 0 is green, or transparent."""
    img = Image.new("P", (40, 30), 1)
    img.putpalette([0, 255, 0, *RED])
    img.paste(0, (0, 0, 20, 30))
    if transparent:
        img.info["transparency"] = 0
    return img


def _rgba() -> Image.Image:
    """Left half fully transparent green, right half opaque red."""
    img = Image.new("RGBA", (40, 30), (*RED, 255))
    img.paste((0, 255, 0, 0), (0, 0, 20, 30))
    return img


def _sixteen_bit(mode: str) -> bytes:
    """Left half 0x8080 (mid-grey, 128 in 8 bits), right half 0xFFFF: a plain convert would clip both to white."""
    samples = np.full((30, 40), 0xFFFF, dtype=np.uint16)
    samples[:, :20] = 0x8080
    img = Image.fromarray(samples)
    assert img.mode == "I;16"
    # Pillow opens 16-bit PNG as I;16 and 16-bit PGM as I.
    return _encoded(img, "PNG") if mode == "I;16" else _encoded(img, "PPM")


GREY = (100, 100, 100)
COLOUR_CASES = {
    "L": (_encoded(Image.new("L", (40, 30), 100), "JPEG"), "L", GREY, GREY),
    "CMYK": (_encoded(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG"), "CMYK", (0, 255, 255), (0, 255, 255)),
    "P": (_encoded(_palette(transparent=False), "PNG"), "P", (0, 255, 0), RED),
    "P-transparent": (_encoded(_palette(transparent=True), "PNG"), "P", (0, 0, 0), RED),
    "RGBA": (_encoded(_rgba(), "PNG"), "RGBA", (0, 0, 0), RED),
    "RGB-PNG": (_encoded(_halves(40, 30), "PNG"), "RGB", RED, BLUE),
    "I;16-PNG": (_sixteen_bit("I;16"), "I;16", (128, 128, 128), (255, 255, 255)),
    "I-PGM": (_sixteen_bit("I"), "I", (128, 128, 128), (255, 255, 255)),
}


@pytest.mark.parametrize("case", list(COLOUR_CASES))
def test_every_colour_mode_comes_out_rgb_with_its_colours(case: str) -> None:
    data, source_mode, left, right = COLOUR_CASES[case]
    assert Image.open(io.BytesIO(data)).mode == source_mode
    img = _open(resize_jpeg(data, 30, "pad", 95))  # pad keeps the halves apart: 40x30 -> 30x22 inside 30x30
    assert img.mode == "RGB" and img.size == (30, 30)
    assert _near(img.getpixel((4, 15)), left, tolerance=6), img.getpixel((4, 15))
    assert _near(img.getpixel((25, 15)), right, tolerance=6), img.getpixel((25, 15))


@pytest.mark.parametrize("case", list(COLOUR_CASES))
def test_every_colour_mode_keeps_its_colours_when_reduced_before_it_becomes_rgb(case: str) -> None:
    """Ten times larger, an image without reduced decoding is box-reduced before its mode is converted:
    palettes, transparency and 16-bit samples must come out as at full size."""
    data, source_mode, left, right = COLOUR_CASES[case]
    small = Image.open(io.BytesIO(data))
    large = small.resize((small.width * 10, small.height * 10), Image.Resampling.NEAREST)
    assert large.mode == source_mode
    img = _open(resize_jpeg(_encoded(large, small.format), 30, "pad", 95))
    assert _near(img.getpixel((4, 15)), left, tolerance=6), img.getpixel((4, 15))
    assert _near(img.getpixel((25, 15)), right, tolerance=6), img.getpixel((25, 15))


@pytest.mark.parametrize(("mode", "shape"), [("crop", (2000, 1500)), ("pad", (2400, 300)), ("crop", (2400, 300))])
def test_large_jpeg_decodes_at_reduced_scale(
    monkeypatch: pytest.MonkeyPatch, mode: str, shape: tuple[int, int]
) -> None:
    drafted: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, *args: object) -> object:
        result = original(self, *args)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    result = resize_jpeg(_jpeg(_halves(*shape)), 64, mode, 90)
    assert (result.width, result.height) == _open(result).size == (64, 64)
    (width, height) = drafted[0]
    assert width * height * 16 <= shape[0] * shape[1]  # at least a 4x reduction per side
    needed = 64 if mode == "crop" else 64 * min(shape) / max(shape)
    assert min(width, height) >= needed and max(width, height) >= 64


def test_truncated_jpeg_raises_naming_the_file() -> None:
    data = _jpeg(_halves(200, 200))
    with pytest.raises(CorruptImage, match="ISIC_0000007.jpg") as caught:
        resize_jpeg(data[: len(data) // 2], 32, "crop", 90, name="ISIC_0000007.jpg")
    assert "truncated" in caught.value.reason


def test_garbage_raises_naming_the_file_without_memory_addresses() -> None:
    with pytest.raises(CorruptImage, match="bad.jpg") as caught:
        resize_jpeg(b"this is not an image", 32, "crop", 90, name="bad.jpg")
    assert caught.value.reason == "not a recognised image format"
    assert isinstance(caught.value, ValueError)


def test_output_is_byte_identical_across_calls() -> None:
    data = _jpeg(_halves(123, 77))
    assert resize_jpeg(data, 32, "pad", 90) == resize_jpeg(data, 32, "pad", 90)
    assert resize_jpeg(data, 32, "crop", 90).data != resize_jpeg(data, 32, "crop", 60).data


def test_zero_bytes_is_an_empty_file() -> None:
    with pytest.raises(CorruptImage, match="empty.jpg") as caught:
        resize_jpeg(b"", 32, "crop", 90, name="empty.jpg")
    assert caught.value.reason == "empty file (0 bytes)"


def test_too_many_pixels_are_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _jpeg(_halves(120, 100))
    assert resize_jpeg(data, 16, "crop", 90, max_pixels=120 * 100).width == 16  # at the limit: fine

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded a refused image")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(CorruptImage, match="big.jpg") as caught:
        resize_jpeg(data, 16, "crop", 90, name="big.jpg", max_pixels=120 * 100 - 1)
    assert caught.value.reason == "decompression bomb: 120 x 100 pixels > 11999"


def test_default_pixel_limit_is_pillows_own_and_the_most_allowed() -> None:
    assert PILLOW_MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS == ShardParams().max_pixels
    with pytest.raises(ValidationError, match="max_pixels"):
        ShardParams(max_pixels=PILLOW_MAX_PIXELS + 1)  # Image.open would refuse such images anyway


def _skin_under_a_cast(cast: tuple[float, float, float], size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A textured skin-and-lesion picture photographed under a coloured light (per-channel gains)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: size[1], : size[0]]
    skin = np.array([200.0, 150.0, 130.0]) + rng.normal(0, 8, (size[1], size[0], 3))
    lesion = (((yy - size[1] / 2) / 15) ** 2 + ((xx - size[0] / 2) / 20) ** 2 < 1)[..., None]
    picture = np.where(lesion, skin * 0.45, skin) * np.asarray(cast)
    return Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_shades_of_gray_takes_the_light_out_of_an_image(mode: str) -> None:
    """Two photographs of one lesion under different lights come out alike, and differ without the correction."""
    warm, cool = _skin_under_a_cast((1.15, 1.0, 0.8)), _skin_under_a_cast((0.85, 1.0, 1.2))

    def pixels(img: Image.Image, correction: str) -> np.ndarray:
        return np.asarray(_open(resize_jpeg(_jpeg(img), 32, mode, 95, color_constancy=correction)), dtype=np.float64)

    picture = slice(5, 27) if mode == "pad" else slice(None)  # the pad bands stay black either way
    assert np.abs(pixels(warm, "none")[picture] - pixels(cool, "none")[picture]).mean() > 20
    assert np.abs(pixels(warm, "shades_of_gray")[picture] - pixels(cool, "shades_of_gray")[picture]).mean() < 4
    if mode == "pad":
        assert pixels(warm, "shades_of_gray")[:3].max() < 12  # bands are not part of the estimate or the output


def test_shades_of_gray_leaves_a_grey_lit_image_as_it_was() -> None:
    from skincancer.core.images import shades_of_gray

    neutral = Image.fromarray(np.full((16, 16, 3), 120, dtype=np.uint8))
    assert np.array_equal(np.asarray(shades_of_gray(neutral)), np.asarray(neutral))


def test_colour_constancy_is_a_shard_param_that_predict_applies_too(tmp_path) -> None:
    """shard.color_constancy reaches the one preparation value that shard and predict both encode with."""
    from dataclasses import replace

    from skincancer.shard.prepare import EncodeJob, encode_file

    path = tmp_path / "cast.jpg"
    path.write_bytes(_jpeg(_skin_under_a_cast((1.25, 1.0, 0.75))))
    preparation = ShardParams(image_size=32, color_constancy="shades_of_gray").preparation()
    assert (preparation.color_constancy, preparation.image_size) == ("shades_of_gray", 32)
    corrected = encode_file(EncodeJob(str(path), preparation))
    assert corrected == resize_jpeg(path.read_bytes(), 32, "crop", 92, color_constancy="shades_of_gray")
    assert corrected != encode_file(EncodeJob(str(path), replace(preparation, color_constancy="none")))
    with pytest.raises(ValidationError, match="color_constancy"):
        ShardParams(color_constancy="grey_world")
