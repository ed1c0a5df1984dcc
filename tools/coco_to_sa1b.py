"""Convert COCO instance annotations to an SA-1B folder samft can train on.

usage: python tools/coco_to_sa1b.py INSTANCES_JSON IMAGES_DIR OUT_DIR [--keep-crowd] [--link] [--max-images N]

Polygons, uncompressed RLE (iscrowd) and compressed RLE become SA-1B compressed RLE, with bbox,
area and point_coords computed from each mask. Crowd regions are left out unless --keep-crowd.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samft.entry import run_cli  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="coco_to_sa1b.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("instances_json", type=Path, help="COCO instances_*.json")
    parser.add_argument("images_dir", type=Path, help="folder with the images the json names")
    parser.add_argument("out_dir", type=Path, help="output SA-1B folder (<id>.jpg + <id>.json)")
    parser.add_argument("--keep-crowd", action="store_true", help="also convert iscrowd regions (marked iscrowd: 1)")
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying them")
    parser.add_argument("--max-images", type=int, default=None,
                        help="convert only the first N annotated images (by image id): a quick subset")
    args = parser.parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error(f"--max-images must be >= 1, got {args.max_images}")
    from samft.data.coco import convert_coco

    counts = convert_coco(args.instances_json, args.images_dir, args.out_dir, keep_crowd=args.keep_crowd,
                          link=args.link, max_images=args.max_images)
    print(f"{args.out_dir}: {counts['images']} images, {counts['annotations']} masks written")
    skipped = {k: v for k, v in sorted(counts.items()) if k not in ("images", "annotations") and v}
    if skipped:
        print("left out: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in skipped.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv[1:]))
