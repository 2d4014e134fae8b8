"""Activity charts from audit records, as geometry for server-rendered SVG (templates/console/_charts.html).

Pure functions: records in, bars and lines out, with every number also given as a table row so the data is there for
screen readers and for people who would rather read than look.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

OUTCOMES = ("allowed", "denied", "error")
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 220, 44, 28, 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    cls: str
    label: str


@dataclass
class Chart:
    title: str
    bars: list[Bar] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)      # (css class, SVG points)
    dots: list[tuple[str, float, float, str]] = field(default_factory=list)  # (css class, x, y, label)
    x_labels: list[tuple[float, str]] = field(default_factory=list)
    y_labels: list[tuple[float, str]] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)      # (css class, label)
    rows: list[list[str]] = field(default_factory=list)             # the same data as a table
    header: list[str] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT


def _time(record: dict) -> datetime | None:
    try:
        return datetime.fromisoformat(record["time"])
    except (KeyError, TypeError, ValueError):
        return None


def _minutes(end: datetime, span: int) -> list[datetime]:
    last = end.replace(second=0, microsecond=0)
    return [last - timedelta(minutes=span - 1 - i) for i in range(span)]


def _y_axis(chart: Chart, top: float, unit: str = "") -> None:
    plot = chart.height - PAD_BOTTOM - PAD_TOP
    for frac in (0, 0.5, 1):
        chart.y_labels.append((PAD_TOP + plot * (1 - frac), f"{top * frac:.0f}{unit}"))


def requests_per_minute(records: list[dict], end: datetime, span: int = 30, title: str = "") -> Chart:
    """Stacked bars: requests per minute by outcome over the last `span` minutes."""
    minutes = _minutes(end, span)
    counts: dict[datetime, Counter] = defaultdict(Counter)
    for r in records:
        t = _time(r)
        if t is not None and r.get("outcome") in OUTCOMES:
            counts[t.replace(second=0, microsecond=0)][r["outcome"]] += 1
    chart = Chart(title, legend=[(f"o-{o}", o) for o in OUTCOMES], header=["minute", *OUTCOMES])
    top = max([sum(counts[m].values()) for m in minutes] + [1])
    plot_w, plot_h = chart.width - PAD_LEFT - 8, chart.height - PAD_BOTTOM - PAD_TOP
    step = plot_w / span
    for i, m in enumerate(minutes):
        y = PAD_TOP + plot_h
        for o in OUTCOMES:
            n = counts[m][o]
            if n:
                h = plot_h * n / top
                y -= h
                chart.bars.append(Bar(PAD_LEFT + i * step + 1, y, max(step - 2, 1), h, f"o-{o}",
                                      f"{m:%H:%M} {o}: {n}"))
        if i % 5 == 0 or i == span - 1:
            chart.x_labels.append((PAD_LEFT + i * step + step / 2, f"{m:%H:%M}"))
        if sum(counts[m].values()):
            chart.rows.append([f"{m:%H:%M}", *(str(counts[m][o]) for o in OUTCOMES)])
    _y_axis(chart, top)
    return chart


def latency(records: list[dict], end: datetime, span: int = 30, title: str = "") -> Chart:
    """Median and 95th percentile latency per minute (ms), as two lines."""
    minutes = _minutes(end, span)
    samples: dict[datetime, list[float]] = defaultdict(list)
    for r in records:
        t, ms = _time(r), r.get("latency_ms")
        if t is not None and isinstance(ms, int | float):
            samples[t.replace(second=0, microsecond=0)].append(float(ms))
    stats = {}
    for m in minutes:
        values = sorted(samples[m])
        if values:
            stats[m] = (values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.95))])
    chart = Chart(title, legend=[("l-p50", "p50"), ("l-p95", "p95")], header=["minute", "p50 ms", "p95 ms"])
    top = max([p95 for _, p95 in stats.values()] + [1.0])
    plot_w, plot_h = chart.width - PAD_LEFT - 8, chart.height - PAD_BOTTOM - PAD_TOP
    step = plot_w / span
    for which, cls, name in ((0, "l-p50", "p50"), (1, "l-p95", "p95")):
        xy = [(PAD_LEFT + i * step + step / 2, PAD_TOP + plot_h * (1 - stats[m][which] / top), m)
              for i, m in enumerate(minutes) if m in stats]
        if len(xy) > 1:
            chart.lines.append((cls, " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy)))
        chart.dots.extend((cls, x, y, f"{m:%H:%M} {name}: {stats[m][which]:.1f} ms") for x, y, m in xy)
    for i, m in enumerate(minutes):
        if i % 5 == 0 or i == span - 1:
            chart.x_labels.append((PAD_LEFT + i * step + step / 2, f"{m:%H:%M}"))
        if m in stats:
            chart.rows.append([f"{m:%H:%M}", f"{stats[m][0]:.1f}", f"{stats[m][1]:.1f}"])
    _y_axis(chart, top, " ms")
    return chart


def top_counts(counter: Counter, title: str, header: str, cls: str, n: int = 8) -> Chart:
    """Horizontal bars of the `n` largest counts (top keys, provider errors)."""
    items = counter.most_common(n)
    chart = Chart(title, header=[header, "count"], height=max(60, 26 * len(items) + 20))
    top = max([c for _, c in items] + [1])
    label_w = 250
    for i, (name, count) in enumerate(items):
        w = (chart.width - label_w - 40) * count / top
        chart.bars.append(Bar(label_w, 8 + i * 26, max(w, 1), 18, cls, f"{name}: {count}"))
        chart.y_labels.append((8 + i * 26 + 13, _short(name)))
        chart.rows.append([name, str(count)])
    return chart


def _short(name: str) -> str:
    return name if len(name) <= 30 else name[:13] + "…" + name[-13:]


def key_counts(records: list[dict]) -> Counter:
    """Requests per key (outcome records only: a state change's intent record is not a second request)."""
    return Counter(r["key_id"] for r in records if r.get("key_id") and r.get("outcome") in OUTCOMES)


# The codes a provider's own failure maps to (broker.gate.provider_error); a client's mistake is not a provider error.
PROVIDER_CODES = {"DependencyTimeoutException", "DependencyFailureException", "ThrottlingException"}


def provider_errors(records: list[dict]) -> Counter:
    return Counter(r["provider"] for r in records
                   if r.get("provider") and r.get("outcome") == "error" and r.get("error_code") in PROVIDER_CODES)
