"""Draw a build's Stage-2 output as one picture: per identity its references, then its first
samples, each labelled with the planned yaw (when the backend followed the plan), the |yaw|
measured on the clean crop, and the blur-downscale intensities.

    python docs/examples/stage2_sheet.py BUILD OUT.png [--samples 10]

docs/stage2_echo.png and docs/stage2_folder.png are made by it from
`synfiqa build --set stage2.backend='"echo"' --set run.references=2 --set run.degraded=10` and
the default build.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

TILE, LABEL, GAP = 112, 26, 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    rows = [json.loads(line) for line in (args.build / "manifest.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    identities = sorted({row["identity"] for row in ok})
    references = max(sum(1 for r in ok if r["identity"] == i and r["role"] == "reference") for i in identities)
    width = (references + args.samples) * TILE + GAP
    sheet = Image.new("RGB", (width, len(identities) * (TILE + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    for y, identity in enumerate(identities):
        mine = [r for r in ok if r["identity"] == identity]
        refs = [r for r in mine if r["role"] == "reference"]
        samples = [r for r in mine if r["role"] == "degraded"][: args.samples]
        top = y * (TILE + LABEL)
        for x, row in enumerate(refs + samples):
            left = x * TILE + (GAP if row["role"] == "degraded" else 0) + (references - len(refs)) * TILE * (
                row["role"] == "degraded")
            with Image.open(args.build / row["path"]) as image:
                sheet.paste(image.convert("RGB").resize((TILE, TILE)), (left, top + LABEL))
            name = f"Ref-{row['index']}" if row["role"] == "reference" else f"{row['index']}.jpg"
            planned = f" plan {row['control.yaw']:+.0f}" if "control.yaw" in row else ""
            line1 = f"{name}{planned}{' circ.' if row.get('circular') else ''}"
            line2 = f"|yaw| {row['params']['pose.abs_yaw']:.0f}"
            if "blur-downscale.low_scale" in row["params"]:
                line2 += f" s{row['params']['blur-downscale.low_scale']:.0f} b{row['params']['blur-downscale.blur_level']:.0f}"
            draw.text((left + 2, top + 1), line1, fill="black")
            draw.text((left + 2, top + 12), line2, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)


if __name__ == "__main__":
    main()
