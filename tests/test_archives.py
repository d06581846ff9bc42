import random
import re
import struct
import zipfile
from pathlib import Path

import pytest

from skincancer.ingest import archives
from skincancer.ingest.archives import UnsafeArchive, member_uri, read_uris, safe_members, sha256_hex


def make_zip(path: Path, entries: list[tuple[str, bytes]], symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            if name in symlinks:
                info.create_system = 3
                info.external_attr = 0o120777 << 16
            archive.writestr(info, data)
    return path


def test_safe_members_lists_files_and_skips_directories(tmp_path):
    path = make_zip(tmp_path / "ok.zip", [("train/", b""), ("train/a.jpg", b"a"), ("train/b.jpg", b"bb")])
    assert [info.filename for info in safe_members(path)] == ["train/a.jpg", "train/b.jpg"]


@pytest.mark.parametrize(
    "member",
    [
        "../evil.jpg",
        "train/../../evil.jpg",
        "/abs.jpg",
        "C:/evil.jpg",
        "c:evil.jpg",
        "train\\..\\evil.jpg",
        "\\abs.jpg",
    ],
)
def test_escaping_member_paths_are_refused(tmp_path, member):
    path = make_zip(tmp_path / "bad.zip", [("train/ok.jpg", b"x"), (member, b"evil")])
    with pytest.raises(UnsafeArchive) as caught:
        safe_members(path)
    assert repr(member) in str(caught.value)
    assert "bad.zip" in str(caught.value)


def test_symlink_member_is_refused(tmp_path):
    path = make_zip(tmp_path / "link.zip", [("train/link.jpg", b"/etc/passwd")], symlinks=("train/link.jpg",))
    with pytest.raises(UnsafeArchive, match=r"'train/link.jpg' is a symlink") as caught:
        safe_members(path)
    assert "link.zip" in str(caught.value)


def test_member_over_the_size_bound_is_refused(tmp_path):
    path = make_zip(tmp_path / "big.zip", [("small.jpg", b"x" * 10), ("huge.jpg", b"x" * 100)])
    assert len(safe_members(path, max_member_bytes=100)) == 2
    with pytest.raises(UnsafeArchive, match=r"'huge.jpg' declares 100 bytes, above the 50-byte bound") as caught:
        safe_members(path, max_member_bytes=50)
    assert "big.zip" in str(caught.value)


def test_read_uris_keeps_input_order_across_zips_and_loose_files(tmp_path):
    (tmp_path / "src").mkdir()
    make_zip(tmp_path / "src/a.zip", [("x/1.jpg", b"one"), ("x/2.jpg", b"two")])
    make_zip(tmp_path / "src/b.zip", [("3.jpg", b"three")])
    (tmp_path / "src/loose.jpg").write_bytes(b"loose")
    uris = ["src/a.zip!x/2.jpg", "src/loose.jpg", "src/a.zip!x/1.jpg", "src/b.zip!3.jpg"]
    assert list(read_uris(tmp_path, uris)) == [
        ("src/a.zip!x/2.jpg", b"two"),
        ("src/loose.jpg", b"loose"),
        ("src/a.zip!x/1.jpg", b"one"),
        ("src/b.zip!3.jpg", b"three"),
    ]


def test_read_uris_opens_each_zip_once_per_consecutive_run(tmp_path, monkeypatch):
    make_zip(tmp_path / "a.zip", [(f"{i}.jpg", bytes([i])) for i in range(5)])
    make_zip(tmp_path / "b.zip", [("0.jpg", b"b")])
    opened = []
    real = zipfile.ZipFile

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(archives.zipfile, "ZipFile", counting)
    uris = sorted([f"a.zip!{i}.jpg" for i in range(5)] + ["b.zip!0.jpg"])
    assert [data for _, data in read_uris(tmp_path, uris)] == [bytes([i]) for i in range(5)] + [b"b"]
    assert opened == ["a.zip", "b.zip"]


@pytest.mark.parametrize(
    ("uri", "named"),
    [("a.zip!nope.jpg", "'nope.jpg'"), ("missing.zip!1.jpg", "missing.zip"), ("gone.jpg", "gone.jpg")],
)
def test_missing_file_or_member_names_the_uri(tmp_path, uri, named):
    make_zip(tmp_path / "a.zip", [("1.jpg", b"1")])
    with pytest.raises(FileNotFoundError) as caught:
        list(read_uris(tmp_path, ["a.zip!1.jpg", uri]))
    assert uri in str(caught.value) and named in str(caught.value)


def test_read_uris_refuses_uris_escaping_raw_root(tmp_path):
    with pytest.raises(UnsafeArchive, match=r"'\.\./secret.zip!a.jpg'"):
        list(read_uris(tmp_path, ["../secret.zip!a.jpg"]))


def test_read_uris_refuses_an_unsafe_archive(tmp_path):
    make_zip(tmp_path / "bad.zip", [("ok.jpg", b"1"), ("../evil.jpg", b"2")])
    with pytest.raises(UnsafeArchive, match="evil.jpg"):
        list(read_uris(tmp_path, ["bad.zip!ok.jpg"]))


def test_member_uri_and_sha256():
    assert member_uri(Path("isic2020") / "x.zip", "train/ISIC_1.jpg") == "isic2020/x.zip!train/ISIC_1.jpg"
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_member_expanding_like_a_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/ok.jpg", b"x")
        archive.writestr("train/bomb.jpg", bytes(2 * 1024 * 1024))  # deflates ~1000x
    with pytest.raises(UnsafeArchive, match=r"'train/bomb.jpg' expands \d+ -> 2097152 bytes, above the 100x") as caught:
        safe_members(path)
    assert "bomb.zip" in str(caught.value) and "zip bomb" in str(caught.value)
    with pytest.raises(UnsafeArchive, match="bomb.jpg"):
        list(read_uris(tmp_path, ["bomb.zip!train/ok.jpg"]))
    assert len(safe_members(path, max_ratio=10_000)) == 2


def test_compression_ratio_is_only_checked_on_members_over_a_mebibyte(tmp_path):
    path = tmp_path / "csv.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("table.csv", bytes(512 * 1024))  # a small, very repetitive table
        archive.writestr("image.jpg", random.Random(0).randbytes(2 * 1024 * 1024))  # large, incompressible
    assert [info.filename for info in safe_members(path)] == ["table.csv", "image.jpg"]


def test_archive_declaring_too_much_in_all_is_refused(tmp_path):
    path = make_zip(tmp_path / "many.zip", [(f"{i}.jpg", b"x" * 100) for i in range(3)])
    assert len(safe_members(path, max_archive_bytes=300)) == 3
    with pytest.raises(UnsafeArchive, match=r"many.zip: members declare 300 bytes in all, above the 299-byte archive"):
        safe_members(path, max_archive_bytes=299)


@pytest.mark.parametrize("member", ["train/", "train/../a.jpg", "a.jpg/"])
def test_read_uris_only_reads_validated_file_members(tmp_path, member):
    make_zip(tmp_path / "a.zip", [("train/", b""), ("a.jpg", b"1")])
    with pytest.raises(FileNotFoundError, match=re.escape(repr(member))):
        list(read_uris(tmp_path, [f"a.zip!{member}"]))


def corrupt_first_file(path: Path) -> None:
    """Flip one byte in the middle of the first file member's stored data: it no longer reads (CRC or deflate)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(info for info in archive.infolist() if not info.is_dir())
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_truncated_archive_is_named_wherever_it_is_opened(tmp_path):
    path = make_zip(tmp_path / "cut.zip", [(f"{i}.jpg", random.Random(i).randbytes(1000)) for i in range(4)])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the central directory at the end is gone
    for read in (safe_members, archives.read_through, lambda p: list(read_uris(tmp_path, ["cut.zip!0.jpg"]))):
        with pytest.raises(archives.BrokenArchive, match=r"cut\.zip: cannot be read \(BadZipFile: File is not a zip") as caught:
            read(path)
        assert caught.value.path == path and "truncated" in str(caught.value)


def test_a_member_failing_its_crc_is_named_with_its_archive(tmp_path):
    path = make_zip(tmp_path / "crc.zip", [("a.jpg", b"the bytes of an image" * 50), ("b.jpg", b"another")])
    corrupt_first_file(path)
    assert [info.filename for info in safe_members(path)] == ["a.jpg", "b.jpg"]  # the listing alone looks fine
    with pytest.raises(archives.BrokenArchive, match=r"crc\.zip: member 'a\.jpg': cannot be read \(BadZipFile: Bad CRC"):
        archives.read_through(path)
    with pytest.raises(archives.BrokenArchive, match=r"crc\.zip: member 'a\.jpg'"):
        list(read_uris(tmp_path, ["crc.zip!b.jpg", "crc.zip!a.jpg"]))


def test_read_through_reads_every_member_of_a_safe_archive_only(tmp_path):
    good = make_zip(tmp_path / "good.zip", [("train/", b""), ("train/a.jpg", b"a"), ("train/b.jpg", b"bb")])
    assert archives.read_through(good) == 2
    bad = make_zip(tmp_path / "bad.zip", [("ok.jpg", b"1"), ("../evil.jpg", b"2")])
    with pytest.raises(UnsafeArchive, match=r"bad\.zip: member '\.\./evil\.jpg' has a '\.\.' component"):
        archives.read_through(bad)
