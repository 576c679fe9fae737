"""Previews in the file browser: text (head and tail), CSV/TSV tables, JSON, image thumbnails."""

import io
import json
import os

import pytest
from PIL import Image

from support.daemon import Daemon, SharedTree, assert_no_traceback
from support.uploads import SMALL, upload

pytestmark = pytest.mark.databases("sqlite")  # files on disk; no SQL of interest


@pytest.fixture(scope="module")
def daemon(users):
    shared = SharedTree()
    daemon = Daemon(shared, config=SMALL).start()
    yield daemon
    daemon.stop()
    logs = daemon.logs()
    shared.cleanup()
    assert_no_traceback(logs)


def put(daemon, data, filename):
    return upload(daemon, "alice", data, filename=filename, chunk_size=256 * 1024)


def preview(daemon, stored, **params):
    return daemon.get(f"/api/v2/files/{stored['file_id']}/preview", user="alice", params=params)


def test_text_head_and_tail_of_a_long_file(daemon):
    # 3-byte characters: the last 64 KiB begin inside one, which the tail leaves out.
    data = ("줄 " * 20 + "\n").encode() * 2000
    stored = put(daemon, data, "결과 파일.txt")
    head = preview(daemon, stored).json()
    assert head["kind"] == "text" and head["truncated"] is True and head["offset"] == 0
    assert head["content"] == data[:64 * 1024].decode("utf-8", errors="ignore")
    tail = preview(daemon, stored, tail="true").json()
    assert tail["kind"] == "text" and tail["truncated"] is True
    assert len(data) - 64 * 1024 < tail["offset"] <= len(data) - 64 * 1024 + 3
    assert tail["content"] == data[tail["offset"]:].decode("utf-8")
    assert tail["content"].endswith("줄 \n")
    short = put(daemon, b"hello\nworld\n", "short.txt")
    assert preview(daemon, short, tail="true").json()["content"] == "hello\nworld\n"
    assert preview(daemon, short, tail="maybe").status_code == 400


@pytest.mark.parametrize("delimiter, name", [(";", "측정 결과.csv"), ("\t", "values.tsv"), (",", "plain.csv")])
def test_csv_and_tsv_as_a_table_of_the_first_100_rows(daemon, delimiter, name):
    lines = [delimiter.join(["이름", "value", "note"])]
    lines += [delimiter.join([f"항목 {i}", str(i * 1.5), f'"quoted{delimiter} {i}"']) for i in range(150)]
    stored = put(daemon, ("\n".join(lines) + "\n").encode(), name)
    table = preview(daemon, stored).json()
    assert table["kind"] == "table" and table["delimiter"] == delimiter
    assert table["columns"] == ["이름", "value", "note"]
    assert len(table["rows"]) == 100 and table["truncated"] is True
    assert table["rows"][0] == ["항목 0", "0.0", f"quoted{delimiter} 0"]
    assert table["rows"][99][0] == "항목 99"
    small = put(daemon, f"a{delimiter}b\n1{delimiter}2\n".encode(), "small " + name)
    assert preview(daemon, small).json() | {"file_id": None} == {
        "file_id": None, "filename": "small " + name, "mime_type": small["mime_type"], "size": small["size"],
        "kind": "table", "delimiter": delimiter, "columns": ["a", "b"], "rows": [["1", "2"]], "truncated": False}


def test_json_pretty_and_bounded(daemon):
    value = {"이름": "결과", "values": list(range(5)), "nested": {"a": [1, {"b": None}]}}
    stored = put(daemon, json.dumps(value, separators=(",", ":")).encode(), "settings.json")
    answer = preview(daemon, stored).json()
    assert answer["kind"] == "json" and answer["truncated"] is False
    assert answer["content"] == json.dumps(value, indent=2, ensure_ascii=False)
    # Too long to pretty-print whole (over 1 MiB): shown as text, the first 64 KiB.
    big = put(daemon, json.dumps([{"k": "v" * 100}] * 12000).encode(), "big.json")
    shown = preview(daemon, big).json()
    assert shown["kind"] == "text" and shown["truncated"] is True and len(shown["content"]) == 64 * 1024
    # A pretty form longer than 64 KiB is cut.
    wide = put(daemon, json.dumps(list(range(40000))).encode(), "wide.json")
    cut = preview(daemon, wide).json()
    assert cut["kind"] == "json" and cut["truncated"] is True and len(cut["content"]) == 64 * 1024
    broken = put(daemon, b'{"not": json', "broken.json")
    assert preview(daemon, broken).json()["kind"] == "text"


def _image(image_format, size=(1000, 500), mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(out, format=image_format)
    return out.getvalue()


@pytest.mark.parametrize("image_format, suffix, size", [
    ("PNG", "png", (1000, 500)), ("JPEG", "jpg", (300, 1200)), ("GIF", "gif", (640, 480)),
    ("WEBP", "webp", (100, 60))])
def test_images_get_a_png_thumbnail_of_at_most_256_pixels(daemon, image_format, suffix, size):
    stored = put(daemon, _image(image_format, size), f"그림 {suffix}.{suffix}")
    info = preview(daemon, stored).json()
    assert info["kind"] == "image" and (info["width"], info["height"]) == size
    assert info["format"] == image_format
    assert info["thumbnail"] == f"/api/v2/files/{stored['file_id']}/thumbnail"
    answer = daemon.get(info["thumbnail"], user="alice")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
    thumb = Image.open(io.BytesIO(answer.content))
    assert thumb.format == "PNG"
    scale = min(1, 256 / max(size))
    assert abs(thumb.size[0] - size[0] * scale) <= 1 and abs(thumb.size[1] - size[1] * scale) <= 1
    again = daemon.get(info["thumbnail"], user="alice", headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304


def test_decompression_bombs_and_broken_images_are_refused(daemon):
    # 100 million one-bit pixels in a few kilobytes: over Pillow's limit of about 89 million.
    bomb = put(daemon, _image("PNG", (10000, 10000), mode="1"), "bomb.png")
    assert bomb["size"] < 1024 * 1024
    for suffix in ("/thumbnail", "/preview"):
        answer = daemon.get(f"/api/v2/files/{bomb['file_id']}{suffix}", user="alice")
        assert answer.status_code == 422 and answer.json()["error"] == "image_too_large", answer.text
        assert "10000x10000" in answer.json()["message"]
    broken = put(daemon, _image("PNG")[:60] + os.urandom(200), "broken.png")
    answer = daemon.get(f"/api/v2/files/{broken['file_id']}/thumbnail", user="alice")
    assert answer.status_code == 422 and answer.json()["error"] == "unreadable_image", answer.text


def test_anything_else_is_415_saying_what_it_is(daemon):
    hdf5 = put(daemon, b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4, "측정.h5")
    refused = preview(daemon, hdf5)
    assert refused.status_code == 415 and refused.json()["error"] == "no_preview"
    assert refused.json()["message"].startswith("측정.h5 is a data file (application/x-hdf5); a preview exists")
    text = put(daemon, b"just text\n", "note.txt")
    thumb = daemon.get(f"/api/v2/files/{text['file_id']}/thumbnail", user="alice")
    assert thumb.status_code == 415 and "note.txt is a text file (text/plain)" in thumb.json()["message"]
    assert daemon.get(f"/api/v2/files/{text['file_id']}/thumbnail", user="bob").status_code == 404


def test_a_fifo_in_place_of_an_image_is_refused_at_once(daemon):
    stored = put(daemon, _image("PNG", (20, 20)), "trap.png")
    os.unlink(stored["storage_path"])
    os.mkfifo(stored["storage_path"])
    os.chown(stored["storage_path"], 2001, 2001)
    answer = daemon.get(f"/api/v2/files/{stored['file_id']}/thumbnail", user="alice", timeout=10)
    assert answer.status_code == 409 and answer.json()["error"] == "unsafe_path"
