"""Hand-written SVG line charts (no plotting library): axes, a few ticks, polylines, a legend."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

W, H = 560, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 44
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")


@dataclass(frozen=True)
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    color: str = PALETTE[0]


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:.4g}"


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> None:
        self.log = log
        self.lo, self.hi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        if self.hi <= self.lo:
            self.hi = self.lo + 1.0
        self.a, self.b = a, b

    def __call__(self, v: float) -> float:
        v = math.log10(max(v, 10 ** self.lo)) if self.log else v
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)

    def ticks(self) -> list[float]:
        if self.log:
            return [10.0 ** e for e in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
        return nice_ticks(self.lo, self.hi)


def line_chart(title: str, series: list[Series], x_label: str, y_label: str,
               log_x: bool = False, y_max: float | None = None) -> str:
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys)]
    if not points:
        return _frame(title, '<text x="50%" y="50%" text-anchor="middle" fill="#666">no data</text>')
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_lo = min(v for v in xs if v > 0) if log_x and any(v > 0 for v in xs) else min(xs)
    sx = _Scale(x_lo, max(xs), LEFT, W - RIGHT, log=log_x and x_lo > 0)
    sy = _Scale(0.0, y_max if y_max is not None else max(max(ys), 1e-9) * 1.05, H - BOTTOM, TOP)
    parts = [_axes(sx, sy, x_label, y_label)]
    for s in series:
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(s.xs, s.ys))
        parts.append(f'<polyline fill="none" stroke="{s.color}" stroke-width="2" points="{coords}"/>')
    parts.append(_legend(series))
    return _frame(title, "".join(parts))


def _axes(sx: _Scale, sy: _Scale, x_label: str, y_label: str) -> str:
    out = [f'<line x1="{LEFT}" y1="{H - BOTTOM}" x2="{W - RIGHT}" y2="{H - BOTTOM}" stroke="#333"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{H - BOTTOM}" stroke="#333"/>']
    for t in sx.ticks():
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#e5e7eb"/>'
                   f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in sy.ticks():
        y = sy(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 8}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(14,{(TOP + H - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    return "".join(out)


def _legend(series: list[Series]) -> str:
    out = []
    for i, s in enumerate(series):
        x = LEFT + 8 + i * 130
        out.append(f'<rect x="{x}" y="{TOP + 4}" width="12" height="3" fill="{s.color}"/>'
                   f'<text x="{x + 16}" y="{TOP + 10}">{escape(s.name)}</text>')
    return "".join(out)


def _frame(title: str, body: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="sans-serif" font-size="11"><text x="{W / 2}" y="16" text-anchor="middle" '
            f'font-size="13" font-weight="bold">{escape(title)}</text>{body}</svg>')
