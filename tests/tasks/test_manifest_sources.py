"""Where a manifest's images may come from: public hosts only, local files only from inside the
manifest's folder or the explicit assets folder."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tasks.store.manifest import ManifestError, ManifestRow, read_manifest

ROOT = Path(__file__).resolve().parents[2]
PNG = (ROOT / "data" / "manifests" / "images" / "sunrise.png").read_bytes()
INSIDE_RULE = "must be inside the manifest's folder or --assets"


def read_rows(folder: Path, rows: list[dict[str, Any]], **kwargs: Any) -> tuple[ManifestRow, ...]:
    path = folder / "m.jsonl"
    lines = [json.dumps({"id": f"r{n}", "prompt": "A fox", **row}) for n, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return read_manifest(path, **kwargs).rows


def one(folder: Path, **cells: Any) -> ManifestRow:
    (row,) = read_rows(folder, [cells])
    return row


# --- http(s) image and video URLs ---

LITERAL_HOSTS = [
    "169.254.169.254",
    "10.0.0.5",
    "10.0.0.5.",
    "192.168.1.2",
    "172.16.0.1",
    "127.0.0.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:169.254.169.254]",
    "[fe80::1]",
    "[fd00::1]",
    "0.0.0.0",
    "metadata.google.internal",
    "METADATA.GOOGLE.INTERNAL.",
    "localhost",
    "LocalHost.",
    "cdn.localhost",
    "public.example@127.0.0.1",
]


@pytest.mark.parametrize("host", LITERAL_HOSTS)
def test_non_public_literal_hosts_are_refused_naming_row_column_rule(
    tmp_path: Path, host: str
) -> None:
    """Private, loopback, link-local and metadata hosts as written are invalid rows."""
    row = one(tmp_path, image_urls=[f"https://{host}/a.png"])
    assert not row.valid and row.request is None
    assert row.message.startswith("row 1 (id 'r0'): image_urls: entry 1: host "), row.message
    assert "image URLs must name a public host" in row.problems["image_urls"]


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001", "0177.0.0.1", "0xa9fea9fe"])
def test_numeric_shorthands_are_judged_by_what_they_resolve_to(tmp_path: Path, host: str) -> None:
    """`http://2130706433/` is 127.0.0.1 to every HTTP client: resolved, then refused."""
    row = one(tmp_path, image_urls=[f"http://{host}/a.png"])
    assert not row.valid
    assert "resolves to" in row.problems["image_urls"], row.problems


def test_localhost_spelled_as_a_name_is_refused(tmp_path: Path) -> None:
    """`localhost.` (a fully qualified name) is loopback, never forwarded to the vendor."""
    row = one(tmp_path, image_urls=["https://localhost./a.png"])
    assert "a loopback address" in row.problems["image_urls"], row.problems


@pytest.mark.parametrize(
    "url",
    [
        "https://93.184.216.34/a.png",
        "https://[2606:4700::1111]/a.png",
        "https://img.example/a.png",  # does not resolve here: the vendor resolves it, not us
        "HTTPS://IMG.EXAMPLE:8443/A.PNG",
    ],
)
def test_public_and_unresolvable_hosts_pass(tmp_path: Path, url: str) -> None:
    """Public literals pass; a name we cannot resolve is the vendor's to fetch, not refused."""
    row = one(tmp_path, image_urls=[url])
    assert row.valid, row.message
    assert row.request is not None and row.request.image_urls == (url,)


def test_video_urls_follow_the_same_host_rule(tmp_path: Path) -> None:
    """A reference video on the metadata address is refused like an image would be."""
    row = one(tmp_path, video_urls=["http://169.254.169.254/latest/v.mp4"])
    assert row.message.startswith("row 1 (id 'r0'): video_urls: entry 1: host 169.254.169.254")
    assert "public host" in row.problems["video_urls"]


def test_refusal_names_the_entry_and_never_echoes_a_signed_query(tmp_path: Path) -> None:
    """The message says which entry broke which rule without the URL's credential."""
    row = one(
        tmp_path,
        image_urls=[
            "https://img.example/1.png",
            "https://img.example/2.png",
            "https://10.1.2.3/3.png?X-Amz-Signature=s3cr3t",
        ],
    )
    rule = row.problems["image_urls"]
    assert rule.startswith("entry 3: host 10.1.2.3 is a private address"), rule
    assert "s3cr3t" not in row.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1\\@img.example/a.png",  # browsers read the host as 127.0.0.1
        "https://img.example/a b.png",
        "https://img.ex\tample/a.png",
        "https://[::1/a.png",
        "https://img.example:99999/a.png",
    ],
)
def test_urls_that_parsers_disagree_on_are_refused(tmp_path: Path, url: str) -> None:
    """A URL other parsers could read with a different host is refused, not guessed at."""
    row = one(tmp_path, image_urls=[url])
    assert not row.valid
    assert "image_urls" in row.problems, row.problems


def test_each_distinct_host_is_resolved_once_per_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3,000-row manifest naming three hosts costs three look-ups, not 3,000."""
    real = socket.getaddrinfo
    asked: list[object] = []

    def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        return real(host, *args, **kwargs)

    # A counting pass-through: the real resolver still answers every look-up.
    monkeypatch.setattr(socket, "getaddrinfo", counting)
    hosts = ["img.example", "2130706433", "cdn.example"]
    rows = read_rows(
        tmp_path, [{"image_urls": [f"https://{hosts[n % 3]}/{n}.png"]} for n in range(3000)]
    )
    assert sorted(map(str, asked)) == sorted(hosts)
    assert [row.valid for row in rows[:3]] == [True, False, True]


# --- local image files ---


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """tmp/manifests (the manifest's folder), tmp/assets, and a secret next to them."""
    folder = tmp_path / "manifests"
    assets = tmp_path / "assets"
    (folder / "sub").mkdir(parents=True)
    assets.mkdir()
    (tmp_path / "secret.png").write_bytes(PNG)
    (folder / "inside.png").write_bytes(PNG)
    (folder / "sub" / "deep.png").write_bytes(PNG)
    (assets / "shared.png").write_bytes(PNG)
    return {"root": tmp_path, "folder": folder, "assets": assets}


def _refused_outside(row: ManifestRow) -> None:
    assert not row.valid and row.request is None
    assert row.message.startswith("row 1 (id 'r0'): image_urls: entry 1 ("), row.message
    assert INSIDE_RULE in row.problems["image_urls"], row.problems


def test_dotdot_escape_is_refused(layout: dict[str, Path]) -> None:
    """`../secret.png` names a real image outside the manifest's folder: refused."""
    _refused_outside(one(layout["folder"], image_urls=["../secret.png"]))


def test_absolute_path_outside_is_refused(layout: dict[str, Path]) -> None:
    """An absolute path to an image elsewhere on disk is refused."""
    _refused_outside(one(layout["folder"], image_urls=[str(layout["root"] / "secret.png")]))


def test_symlink_inside_pointing_outside_is_refused(layout: dict[str, Path]) -> None:
    """A link in the folder to a file outside it is judged by where it points."""
    (layout["folder"] / "link.png").symlink_to(layout["root"] / "secret.png")
    _refused_outside(one(layout["folder"], image_urls=["link.png"]))


def test_symlinked_subfolder_pointing_outside_is_refused(layout: dict[str, Path]) -> None:
    """A linked folder inside is no way out either."""
    (layout["folder"] / "elsewhere").symlink_to(layout["root"], target_is_directory=True)
    _refused_outside(one(layout["folder"], image_urls=["elsewhere/secret.png"]))


def test_missing_file_outside_is_refused_by_the_folder_rule(layout: dict[str, Path]) -> None:
    """Outside paths are refused before being looked at, so messages reveal nothing about them."""
    _refused_outside(one(layout["folder"], image_urls=["../no-such.png"]))


@pytest.mark.parametrize(
    "entry", ["inside.png", "sub/deep.png", "sub/../inside.png", "./inside.png"]
)
def test_files_inside_the_manifest_folder_are_accepted(layout: dict[str, Path], entry: str) -> None:
    """Files under the manifest's folder (however the path is spelled) are read and inlined."""
    row = one(layout["folder"], image_urls=[entry])
    assert row.valid, row.message
    assert row.request is not None and row.request.image_urls[0].startswith("data:image/png;")


def test_absolute_path_and_symlink_inside_are_accepted(layout: dict[str, Path]) -> None:
    """An absolute path into the folder, and a link that stays inside, are fine."""
    (layout["folder"] / "alias.png").symlink_to(layout["folder"] / "sub" / "deep.png")
    row = one(layout["folder"], image_urls=[str(layout["folder"] / "inside.png")])
    assert row.valid, row.message
    assert one(layout["folder"], image_urls=["alias.png"]).valid


@pytest.mark.parametrize("as_text", [False, True])
def test_files_in_the_explicit_assets_folder_are_accepted(
    layout: dict[str, Path], as_text: bool
) -> None:
    """With assets=DIR, files there pass by absolute or relative path; outside still fails."""
    assets: str | Path = str(layout["assets"]) if as_text else layout["assets"]
    rows = read_rows(
        layout["folder"],
        [
            {"image_urls": [str(layout["assets"] / "shared.png")]},
            {"image_urls": ["../assets/shared.png"]},
            {"image_urls": ["inside.png"]},
            {"image_urls": ["../secret.png"]},
        ],
        assets=assets,
    )
    assert [row.valid for row in rows] == [True, True, True, False], [r.message for r in rows]
    assert INSIDE_RULE in rows[3].problems["image_urls"]


def test_assets_folder_given_through_a_symlink_is_resolved(layout: dict[str, Path]) -> None:
    """`--assets` naming a link to the real folder allows the files of the real folder."""
    (layout["root"] / "assets-link").symlink_to(layout["assets"], target_is_directory=True)
    (row,) = read_rows(
        layout["folder"],
        [{"image_urls": [str(layout["assets"] / "shared.png")]}],
        assets=layout["root"] / "assets-link",
    )
    assert row.valid, row.message


def test_without_assets_the_assets_folder_is_outside(layout: dict[str, Path]) -> None:
    """The assets folder is allowed only when named: the default is the manifest's folder."""
    _refused_outside(one(layout["folder"], image_urls=["../assets/shared.png"]))


def test_an_assets_folder_that_does_not_exist_stops_the_read(layout: dict[str, Path]) -> None:
    """A mistyped --assets is said at once, not as a refusal on every image row."""
    path = layout["folder"] / "m.jsonl"
    path.write_text(json.dumps({"prompt": "A", "image_urls": ["inside.png"]}) + "\n")
    with pytest.raises(ManifestError, match=r"--assets .*typo: no such folder"):
        read_manifest(path, assets=layout["root"] / "typo")
