"""images.resize_jpeg: exact sizes, EXIF upright, RGB out, draft decode, corrupt input, determinism."""

from __future__ import annotations

import io

import pytest
from PIL import Image, JpegImagePlugin

from skincancer.images import CorruptImage, Resized, resize_jpeg

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


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK"])
def test_other_colour_modes_come_out_rgb(mode: str) -> None:
    src = Image.new(mode, (40, 30))
    buffer = io.BytesIO()
    src.save(buffer, "PNG" if mode == "RGBA" else "JPEG")
    img = _open(resize_jpeg(buffer.getvalue(), 16, "crop", 90))
    assert img.mode == "RGB" and img.size == (16, 16)


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
