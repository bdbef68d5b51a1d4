"""Regenerate the demo manifests and images: `uv run python data/make_demo.py`.

The images are drawn with numpy and encoded by PyAV's PNG encoder because Pillow is not a
dependency. Output is deterministic, so re-running leaves git clean.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "manifests" / "images"
MANIFESTS = HERE / "manifests"
WIDTH, HEIGHT = 320, 180

COLUMNS = ("id", "prompt", "duration", "resolution", "aspect_ratio", "image_urls", "campaign")

# One row per combination the API documents: text-to-video, one image, three images; both
# aspect ratios, every resolution (one short 4k row: it is the expensive one) and duration.
DEMO_ROWS: list[dict[str, Any]] = [
    {
        "id": "city-dawn",
        "prompt": "A quiet city street at dawn, a cyclist glides past shuttered cafes as the "
        "first light hits wet cobblestones; slow dolly forward at eye level; soft "
        "cinematic colour grade; ambient birdsong and distant tram bells.",
        "duration": 8,
        "resolution": "1080p",
        "aspect_ratio": "16:9",
        "image_urls": [],
        "campaign": "spring-launch",
    },
    {
        "id": "forest-stream",
        "prompt": "A clear mountain stream winding through a mossy pine forest, a fox pauses to "
        "drink; handheld close-up that tilts up to the canopy; natural documentary look; "
        "rushing water and rustling leaves.",
        "duration": 6,
        "resolution": "720p",
        "aspect_ratio": "9:16",
        "image_urls": [],
        "campaign": "spring-launch",
    },
    {
        "id": "sunrise-pan",
        "prompt": "Bring this sunrise to life: the sun climbs above the horizon while thin clouds "
        "drift across the gradient sky; slow pan from left to right; painterly, warm "
        "tones; gentle ambient synth pad.",
        "duration": 10,
        "resolution": "1080p",
        "aspect_ratio": "16:9",
        "image_urls": ["images/sunrise.png"],
        "campaign": "brand-refresh",
    },
    {
        "id": "ocean-cliffs",
        "prompt": "Waves crash against tall sea cliffs under a stormy sky, seabirds wheel above "
        "the spray; sweeping aerial drone shot pulling back; high-contrast, moody "
        "realism; roaring surf and wind.",
        "duration": 4,
        "resolution": "4k",
        "aspect_ratio": "16:9",
        "image_urls": [],
        "campaign": "brand-refresh",
    },
    {
        "id": "brand-fusion",
        "prompt": "The logo, colour palette and product from the references assemble in a "
        "clean studio: shapes slide into place and the product rotates on a turntable; "
        "locked-off front camera with a slow push-in; flat motion-graphics style; upbeat "
        "electronic music with soft whooshes.",
        "duration": 8,
        "resolution": "720p",
        "aspect_ratio": "9:16",
        "image_urls": ["images/logo.png", "images/palette.png", "images/product.png"],
        "campaign": "brand-refresh",
    },
    {
        "id": "night-market",
        "prompt": "A busy night market glowing with paper lanterns, a vendor flips skewers over "
        "a smoky grill; tracking shot weaving between stalls; neon-lit street "
        "photography look; sizzling food, chatter and distant music.",
        "duration": 4,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "image_urls": [],
        "campaign": "summer-nights",
    },
    {
        "id": "desert-timelapse",
        "prompt": "Sand dunes in a vast desert as shadows sweep across them from noon to dusk; "
        "static wide shot as a time-lapse; crisp, saturated landscape photography; "
        "low wind and a single sustained cello note.",
        "duration": 10,
        "resolution": "1080p",
        "aspect_ratio": "9:16",
        "image_urls": [],
        "campaign": "summer-nights",
    },
    {
        "id": "paper-boat",
        "prompt": "A child's paper boat drifts down a rain-filled gutter past fallen leaves; "
        "low-angle tracking shot just above the water; whimsical stop-motion style; "
        "raindrops, trickling water and a music-box melody.",
        "duration": 6,
        "resolution": "720p",
        "aspect_ratio": "9:16",
        "image_urls": [],
        "campaign": "summer-nights",
    },
]

# Typical mistakes, one per row, for the docs and the tests (the first row is valid).
INVALID_ROWS: list[dict[str, str]] = [
    {"id": "ok-first", "prompt": "A red kite over green hills; wide shot; calm wind.",
     "duration": "6", "resolution": "720p", "aspect_ratio": "16:9", "image_urls": ""},
    {"id": "five-seconds", "prompt": "A lighthouse beam sweeping the fog; static shot.",
     "duration": "5", "resolution": "720p", "aspect_ratio": "16:9", "image_urls": ""},
    {"id": "too-sharp", "prompt": "Macro shot of dew on a spider web at sunrise.",
     "duration": "6", "resolution": "8k", "aspect_ratio": "16:9", "image_urls": ""},
    {"id": "two-images", "prompt": "Blend these two pictures into one scene.",
     "duration": "6", "resolution": "1080p", "aspect_ratio": "9:16",
     "image_urls": "images/logo.png|images/palette.png"},
    {"id": "no-prompt", "prompt": "", "duration": "8", "resolution": "720p",
     "aspect_ratio": "16:9", "image_urls": ""},
    {"id": "ok-first", "prompt": "The same id again, so this row is refused.",
     "duration": "4", "resolution": "720p", "aspect_ratio": "16:9", "image_urls": ""},
    {"id": "bad id!", "prompt": "An id with a space and a '!' cannot be a file name.",
     "duration": "4", "resolution": "720p", "aspect_ratio": "9:16", "image_urls": ""},
]  # fmt: skip


def encode_png(pixels: np.ndarray) -> bytes:
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "rgb24"
    frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def draw_images() -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    u, v = x / (WIDTH - 1), y / (HEIGHT - 1)

    sunrise = np.stack([200 + 55 * v, 80 + 120 * v, 160 - 140 * v], axis=-1)
    sun = (x - WIDTH / 2) ** 2 + (y - HEIGHT * 0.8) ** 2 < 40**2
    sunrise[sun] = (255, 220, 90)

    product = np.stack([30 + 40 * u, 30 + 40 * v, 60 + 60 * u], axis=-1)
    bottle = (abs(x - WIDTH / 2) < 28) & (y > 40) & (y < 160)
    cap = (abs(x - WIDTH / 2) < 12) & (y > 22) & (y <= 40)
    product[bottle] = (40, 190, 160)
    product[cap] = (240, 240, 240)

    palette = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    swatches = [(231, 76, 60), (241, 196, 15), (46, 204, 113), (52, 152, 219), (155, 89, 182)]
    for n, colour in enumerate(swatches):
        palette[:, n * WIDTH // 5 : (n + 1) * WIDTH // 5] = colour

    logo = np.full((HEIGHT, WIDTH, 3), 245, np.float32)
    ring = abs(np.hypot(x - 110, y - 90) - 50) < 10
    square = (abs(x - 215) < 40) & (abs(y - 90) < 40)
    logo[ring] = (230, 90, 40)
    logo[square] = (30, 60, 140)

    images = {"sunrise": sunrise, "product": product, "palette": palette, "logo": logo}
    return {name: np.clip(a, 0, 255).astype(np.uint8) for name, a in images.items()}


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            images = row.get("image_urls", "")
            # Spreadsheet users type the `|` form; the reader accepts a JSON array too.
            cells = {**row, "image_urls": "|".join(images) if isinstance(images, list) else images}
            writer.writerow({column: cells.get(column, "") for column in columns})


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    for name, pixels in draw_images().items():
        (IMAGES / f"{name}.png").write_bytes(encode_png(pixels))

    write_csv(MANIFESTS / "demo.csv", DEMO_ROWS, COLUMNS)
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in DEMO_ROWS], pa.string()),
            "prompt": pa.array([r["prompt"] for r in DEMO_ROWS], pa.string()),
            "duration": pa.array([r["duration"] for r in DEMO_ROWS], pa.int64()),
            "resolution": pa.array([r["resolution"] for r in DEMO_ROWS], pa.string()),
            "aspect_ratio": pa.array([r["aspect_ratio"] for r in DEMO_ROWS], pa.string()),
            "image_urls": pa.array([r["image_urls"] for r in DEMO_ROWS], pa.list_(pa.string())),
            "campaign": pa.array([r["campaign"] for r in DEMO_ROWS], pa.string()),
        }
    )
    pq.write_table(table, MANIFESTS / "demo.parquet")
    write_csv(MANIFESTS / "invalid.csv", INVALID_ROWS, COLUMNS[:-1])


if __name__ == "__main__":
    main()
