"""Regenerate ``gateway/static/world.json``, the land outline of the fleet page (/status).

Source: Natural Earth's 1:110m land polygons (public domain) as TopoJSON, from the npm
package ``world-atlas`` (ISC licence): ``npm pack world-atlas@2.0.2`` and unpack it, then
``python scripts/world_outline.py package/land-110m.json gateway/static/world.json``.
The output is a list of rings of [lon, lat], rounded to 0.1 degree, with points closer than
``MIN_STEP`` degrees to the previous one dropped: about 35 KB for the whole world."""
from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_STEP = 1.0  # degrees; finer detail is invisible at the page's map size
MIN_POINTS = 4  # smaller rings (tiny islands) are dropped


def decode_arcs(topo: dict) -> list[list[tuple[float, float]]]:
    """TopoJSON's delta-encoded, quantized arcs as absolute [lon, lat] points."""
    (sx, sy), (tx, ty) = topo["transform"]["scale"], topo["transform"]["translate"]
    out = []
    for arc in topo["arcs"]:
        x = y = 0
        points = []
        for dx, dy in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        out.append(points)
    return out


def ring(arcs: list[list[tuple[float, float]]], indexes: list[int]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    for i in indexes:
        arc = arcs[i] if i >= 0 else arcs[~i][::-1]
        points.extend(arc[1:] if points else arc)
    return points


def thin(points: list[tuple[float, float]]) -> list[list[float]]:
    kept: list[list[float]] = []
    for lon, lat in points:
        if kept and abs(lon - kept[-1][0]) < MIN_STEP and abs(lat - kept[-1][1]) < MIN_STEP:
            continue
        kept.append([round(lon, 1), round(lat, 1)])
    return kept


def main(src: str, dst: str) -> int:
    topo = json.loads(Path(src).read_text())
    arcs = decode_arcs(topo)
    rings = []
    for geometry in topo["objects"]["land"]["geometries"]:
        polygons = geometry["arcs"] if geometry["type"] == "MultiPolygon" else [geometry["arcs"]]
        for polygon in polygons:
            outer = thin(ring(arcs, polygon[0]))  # holes (lakes) are left out
            if len(outer) >= MIN_POINTS:
                rings.append(outer)
    doc = {"source": "Natural Earth 1:110m land (public domain), via the world-atlas npm package (ISC)",
           "projection": "equirectangular, [lon, lat] degrees", "rings": rings}
    Path(dst).write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"{dst}: {len(rings)} rings, {sum(map(len, rings))} points", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
