"""fetch: catalog datasets and user sources over a real loopback HTTP server, verified and indexed."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from layout_fixtures import write_class_folders, write_isic2019, write_isic_cli
from test_archives import corrupt_first_file

from skincancer.core.params import FetchParams, SampleParams
from skincancer.ingest.download import ChecksumMismatch, DownloadError
from skincancer.ingest.fetch import CHECKSUMS, FetchError, fetch, read_checksums
from skincancer.ingest.layouts import LayoutError


@dataclass
class Mirror:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    delay: float = 0.0
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def mirror(tmp_path) -> Iterator[Mirror]:
    """A static file server on 127.0.0.1 that records requests and how many overlapped."""
    root = tmp_path / "served"
    root.mkdir()
    state = Mirror("", root)

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            with state.lock:
                state.requests.append(self.path)
                state.authorization.append(self.headers.get("Authorization"))
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                time.sleep(state.delay)
                super().do_GET()
            finally:
                with state.lock:
                    state.in_flight -= 1

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def serve_isic2019(mirror: Mirror) -> Path:
    folder = mirror.root / "challenges/2019"
    folder.mkdir(parents=True)
    return write_isic2019(folder)


def test_catalog_dataset_is_downloaded_verified_and_indexed(mirror, tmp_path):
    serve_isic2019(mirror)
    raw = tmp_path / "raw"
    params = FetchParams(datasets=["isic2019"], mirror=mirror.url, retries=0)
    index = fetch(params, raw)
    assert sorted(mirror.requests) == sorted(f"/challenges/2019/{name}" for name in (
        "ISIC_2019_Training_Input.zip", "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"))
    assert set(index["source"]) == {"isic2019"} and len(index) > 0
    assert index["uri"].str.startswith("isic2019/ISIC_2019_Training_Input.zip!").all()
    recorded = read_checksums(raw)
    assert set(recorded) == {f"isic2019/{name}" for name in ("ISIC_2019_Training_Input.zip",
                             "ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv")}
    assert all(len(entry["sha256"]) == 64 and entry["size"] > 0 for entry in recorded.values())
    assert pd.read_parquet(raw / "index.parquet").equals(index)

    # everything present and verified: a rerun downloads nothing
    mirror.requests.clear()
    assert fetch(params, raw).equals(index)
    assert mirror.requests == []


def test_recorded_checksum_is_enforced_on_later_runs(mirror, tmp_path):
    serve_isic2019(mirror)
    raw = tmp_path / "raw"
    params = FetchParams(datasets=["isic2019"], mirror=mirror.url, retries=0)
    fetch(params, raw)
    truth = raw / "isic2019/ISIC_2019_Training_GroundTruth.csv"
    truth.write_bytes(truth.read_bytes() + b"ISIC_9999999,1,0,0,0,0,0,0,0,0\n")  # tampered after download
    with pytest.raises(ChecksumMismatch, match="ISIC_2019_Training_GroundTruth.csv"):
        fetch(params, raw)


def test_datasets_and_sources_combine_in_one_index(mirror, tmp_path):
    serve_isic2019(mirror)
    write_isic_cli(mirror.root / "cli", as_zip=True)
    cli_zip = next((mirror.root / "cli").glob("*.zip"))
    local = write_class_folders(tmp_path / "kaggle", as_zip=False)
    params = FetchParams.model_validate({
        "datasets": ["sample", "isic2019"],
        "sample": {"n_images": 40},
        "mirror": mirror.url,
        "sources": [
            {"name": "my-cli", "url": f"{mirror.url}/cli/{cli_zip.name}", "layout": "isic-cli"},
            {"name": "kaggle", "url": local.as_uri(), "layout": "class-folders"},
        ],
    })
    index = fetch(params, tmp_path / "raw")
    assert set(index["source"]) == {"sample/isic2017-udacity", "sample/isic2020", "isic2019", "my-cli", "kaggle"}
    assert (tmp_path / "raw/kaggle").is_dir() and (tmp_path / "raw/my-cli" / cli_zip.name).is_file()
    assert set(read_checksums(tmp_path / "raw")) >= {f"my-cli/{cli_zip.name}"}


def test_pinned_sha256_must_match(mirror, tmp_path):
    write_isic_cli(mirror.root / "cli", as_zip=True)
    name = next((mirror.root / "cli").glob("*.zip")).name
    source = {"name": "mine", "url": f"{mirror.url}/cli/{name}", "layout": "isic-cli", "sha256": "0" * 64}
    params = FetchParams.model_validate({"datasets": [], "sources": [source], "retries": 0})
    with pytest.raises(ChecksumMismatch, match="0" * 64):
        fetch(params, tmp_path / "raw")
    assert not (tmp_path / "raw/mine" / name).exists()


def test_auth_token_comes_from_the_environment(mirror, tmp_path, monkeypatch):
    write_isic_cli(mirror.root / "cli", as_zip=True)
    name = next((mirror.root / "cli").glob("*.zip")).name
    source = {"name": "private", "url": f"{mirror.url}/cli/{name}", "layout": "isic-cli", "auth_env": "ISIC_TOKEN"}
    params = FetchParams.model_validate({"datasets": [], "sources": [source], "retries": 0})
    monkeypatch.delenv("ISIC_TOKEN", raising=False)
    with pytest.raises(FetchError, match="ISIC_TOKEN"):
        fetch(params, tmp_path / "raw")
    monkeypatch.setenv("ISIC_TOKEN", "s3cret")
    fetch(params, tmp_path / "raw")
    assert mirror.authorization == ["Bearer s3cret"]


def test_dataset_without_direct_download_says_how_to_get_it(tmp_path):
    with pytest.raises(FetchError, match="isic-9class.*fetch.sources"):
        fetch(FetchParams(datasets=["isic-9class"]), tmp_path / "raw")


def test_unreachable_source_fails_naming_the_url(tmp_path):
    params = FetchParams.model_validate({"datasets": [], "retries": 0, "sources": [
        {"name": "gone", "url": "http://127.0.0.1:9/none.zip", "layout": "isic-cli"}]})
    with pytest.raises(DownloadError, match="127.0.0.1:9/none.zip"):
        fetch(params, tmp_path / "raw")


def test_missing_images_are_reported_or_fatal_with_strict(mirror, tmp_path, caplog):
    folder = serve_isic2019(mirror)
    truth = folder / "ISIC_2019_Training_GroundTruth.csv"
    truth.write_bytes(truth.read_bytes() + b"ISIC_9999999,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    lenient = FetchParams(datasets=["isic2019"], mirror=mirror.url, retries=0)
    index = fetch(lenient, tmp_path / "raw")
    assert "ISIC_9999999" not in set(index["image_id"])
    assert "ISIC_9999999" in caplog.text
    with pytest.raises(LayoutError, match="ISIC_9999999"):
        fetch(lenient.model_copy(update={"strict": True}), tmp_path / "raw")


def test_folders_no_longer_configured_are_pruned(tmp_path):
    raw = tmp_path / "raw"
    (raw / "old-source").mkdir(parents=True)
    (raw / "old-source/file.zip").write_bytes(b"x")
    fetch(FetchParams(sample=SampleParams(n_images=40)), raw)
    assert sorted(p.name for p in raw.iterdir()) == sorted([CHECKSUMS, "duplicates.parquet", "index.parquet", "sample"])


@pytest.mark.slow
def test_flow_downloads_files_concurrently_as_prefect_tasks(mirror, tmp_path, prefect_api):
    import sys

    import httpx
    import yaml
    from project_copy import copy_project, project_env, run

    serve_isic2019(mirror)
    mirror.delay = 1.0
    project = copy_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["fetch"] |= {"datasets": ["isic2019"], "mirror": mirror.url, "workers": 3}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "-m", "flows.fetch"], project, project_env(project) | {"PREFECT_API_URL": prefect_api})
    assert len(pd.read_parquet(project / "data/raw/index.parquet")) > 0
    assert len(mirror.requests) == 3 and mirror.most_in_flight >= 2
    task_runs = httpx.post(f"{prefect_api}/task_runs/filter", json={"limit": 200}).json()
    downloads = [r for r in task_runs if r["task_key"].startswith("download") and r["state_type"] == "COMPLETED"]
    assert len(downloads) >= 3


def test_official_duplicate_pairs_are_collected_for_the_split(mirror, tmp_path):
    from layout_fixtures import write_isic2020_duplicates

    from skincancer.ingest.sample import write_sample

    folder = mirror.root / "challenges/2020"
    sample = write_sample(tmp_path / "sample", n_images=40, seed=2)["isic2020"]
    folder.mkdir(parents=True)
    for file in sample.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    truth = pd.read_csv(folder / "ISIC_2020_Training_GroundTruth.csv", dtype=str, keep_default_na=False)
    truth.insert(2, "lesion_id", "IL_" + truth["image_name"].str[5:])  # the v2 table adds lesion ids
    (folder / "ISIC_2020_Training_GroundTruth.csv").unlink()
    truth.to_csv(folder / "ISIC_2020_Training_GroundTruth_v2.csv", index=False)
    ids = sorted(truth["image_name"])
    write_isic2020_duplicates(folder, [(ids[0], ids[1])])
    index = fetch(FetchParams(datasets=["isic2020"], mirror=mirror.url, retries=0), tmp_path / "raw")
    assert len(index) == len(ids)
    pairs = pd.read_parquet(tmp_path / "raw/duplicates.parquet")
    assert pairs.to_dict("records") == [{"image_id_1": ids[0], "image_id_2": ids[1], "source": "isic2020"}]


def serve_cli_zip(mirror: Mirror) -> tuple[Path, bytes]:
    """An isic-cli zip on the mirror, and its good bytes."""
    write_isic_cli(mirror.root / "cli", as_zip=True)
    served = next((mirror.root / "cli").glob("*.zip"))
    return served, served.read_bytes()


def cli_source(mirror: Mirror, served: Path, **fields) -> FetchParams:
    source = {"name": "mine", "url": f"{mirror.url}/cli/{served.name}", "layout": "isic-cli", **fields}
    return FetchParams.model_validate({"datasets": [], "sources": [source], "retries": 0})


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [truncate, corrupt_first_file])
def test_a_broken_archive_is_named_never_recorded_and_a_fixed_source_then_fetches(mirror, tmp_path, damage):
    served, good = serve_cli_zip(mirror)
    damage(served)
    raw, key = tmp_path / "raw", f"mine/{served.name}"
    params = cli_source(mirror, served)
    with pytest.raises(FetchError) as caught:
        fetch(params, raw)
    message = str(caught.value)
    assert str(raw / key) in message and "cannot be read" in message and f"{mirror.url}/cli/{served.name}" in message
    assert "removed and not recorded: fix the source" in message
    assert key not in read_checksums(raw) and not (raw / key).exists()

    served.write_bytes(good)  # the source is fixed
    assert len(fetch(params, raw)) > 0
    assert read_checksums(raw)[key]["size"] == len(good)


def test_an_archive_recorded_broken_by_an_earlier_fetch_is_repinned_with_the_command(mirror, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from skincancer.cli import app
    from skincancer.ingest.download import download

    served, good = serve_cli_zip(mirror)
    truncate(served)
    monkeypatch.chdir(tmp_path)  # `skincancer repin` works on data/raw under the project root
    raw, key = Path("data/raw"), f"mine/{served.name}"
    params = cli_source(mirror, served)
    # what fetch did before it read archives through: the truncated download recorded as good
    got = download(params.sources[0].url, raw / key, progress=False)
    (raw / CHECKSUMS).write_text(json.dumps({key: {"url": params.sources[0].url, "size": got.size, "sha256": got.sha256}}))
    served.write_bytes(good)  # fixing the source alone does not help: the recorded copy is reused
    with pytest.raises(FetchError, match=rf"cannot be read.*run `skincancer repin {re.escape(key)}`"):
        fetch(params, raw)

    refused = CliRunner().invoke(app, ["repin", "nothing-like-it"])
    assert refused.exit_code == 2 and "records nothing for 'nothing-like-it'" in refused.stderr and "mine" in refused.stderr
    result = CliRunner().invoke(app, ["repin", "mine"])
    assert result.exit_code == 0 and f"forgot {key}" in result.stdout and "dvc repro fetch" in result.stdout
    assert key not in read_checksums(raw) and not (raw / key).exists()
    assert len(fetch(params, raw)) > 0
    assert read_checksums(raw)[key]["size"] == len(good)


def test_a_checksum_mismatch_says_how_to_repin_and_repin_accepts_the_new_bytes(mirror, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from skincancer.cli import app

    truth = serve_isic2019(mirror) / "ISIC_2019_Training_GroundTruth.csv"
    monkeypatch.chdir(tmp_path)
    raw, key = Path("data/raw"), "isic2019/ISIC_2019_Training_GroundTruth.csv"
    params = FetchParams(datasets=["isic2019"], mirror=mirror.url, retries=0)
    fetch(params, raw)
    truth.write_bytes(truth.read_bytes().replace(b"\n", b"\r\n"))  # republished upstream with other line endings
    (raw / key).unlink()
    with pytest.raises(ChecksumMismatch, match=rf"If the source changed on purpose, run `skincancer repin {re.escape(key)}`"):
        fetch(params, raw)
    assert CliRunner().invoke(app, ["repin", key]).exit_code == 0
    fetch(params, raw)
    assert read_checksums(raw)[key]["size"] == truth.stat().st_size


def test_a_params_pin_mismatch_points_at_params_yaml(mirror, tmp_path):
    served, _ = serve_cli_zip(mirror)
    with pytest.raises(ChecksumMismatch, match=r"pinned by the sha256 of source 'mine' in params.yaml"):
        fetch(cli_source(mirror, served, sha256="0" * 64), tmp_path / "raw")


def test_a_missing_token_is_named_before_any_download(mirror, tmp_path, monkeypatch):
    served, _ = serve_cli_zip(mirror)
    public = {"name": "public", "url": f"{mirror.url}/cli/{served.name}", "layout": "isic-cli"}
    private = public | {"name": "private", "auth_env": "ISIC_TOKEN"}
    params = FetchParams.model_validate({"datasets": [], "sources": [public, private], "retries": 0})
    monkeypatch.delenv("ISIC_TOKEN", raising=False)
    with pytest.raises(FetchError, match="source 'private': environment variable ISIC_TOKEN .* is not set"):
        fetch(params, tmp_path / "raw")
    assert mirror.requests == [] and not (tmp_path / "raw").exists()


def test_credentials_in_a_source_url_reach_neither_the_log_nor_checksums(mirror, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    served, _ = serve_cli_zip(mirror)
    secret = "s3cr3t-in-the-url"
    url = f"{mirror.url.replace('http://', f'http://reader:{secret}@')}/cli/{served.name}?token={secret}"
    params = FetchParams.model_validate({"datasets": [], "retries": 0,
                                         "sources": [{"name": "mine", "url": url, "layout": "isic-cli"}]})
    assert len(fetch(params, tmp_path / "raw")) > 0 and mirror.requests == [f"/cli/{served.name}?token={secret}"]
    recorded = (tmp_path / "raw" / CHECKSUMS).read_text()
    assert secret not in caplog.text and secret not in recorded
    assert read_checksums(tmp_path / "raw")[f"mine/{served.name}"]["url"] == (
        f"{mirror.url.replace('http://', 'http://***@')}/cli/{served.name}?token=***")


def test_fetch_hashes_no_image_over_the_shard_stages_pixel_bound(tmp_path):
    """One pixel bound for every stage that decodes: the flow passes `shard.max_pixels`, and an image over it is
    indexed without a perceptual hash (never decoded), as the shard stage then skips it."""
    params = FetchParams.model_validate({"datasets": ["sample"], "sample": {"n_images": 40}})
    hashed = fetch(params, tmp_path / "all")
    smallest = int((hashed["width"] * hashed["height"]).min())
    bounded = fetch(params, tmp_path / "bounded", max_pixels=smallest)
    over = (bounded["width"] * bounded["height"]) > smallest
    assert over.any() and bounded.loc[over, "image_hash"].isna().all()
    assert bounded.loc[~over, "image_hash"].tolist() == hashed.loc[~over, "image_hash"].tolist()
    assert hashed["image_hash"].notna().all()
