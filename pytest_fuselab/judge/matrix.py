"""Images × drivers matrices of containment verdicts: a terminal table and a self-contained HTML page."""

from __future__ import annotations

import html
from collections.abc import Sequence

from pytest_fuselab.judge.containment import Verdict

COLOURS = {"contained": "#d8f3dc", "clean": "#d8f3dc", "breach": "#ffb3b3", "finding": "#ffe8a3",
           "skipped": "#e9ecef"}


def grid(verdicts: Sequence[Verdict]) -> tuple[list[str], list[str], dict[tuple[str, str], Verdict]]:
    images = list(dict.fromkeys(v.image for v in verdicts))
    drivers = list(dict.fromkeys(v.driver for v in verdicts))
    return images, drivers, {(v.image, v.driver): v for v in verdicts}


def cell_text(v: Verdict | None) -> str:
    if v is None:
        return "-"
    return v.verdict.upper() + (f" ({v.splats[0]})" if v.splats else "")


def terminal(verdicts: Sequence[Verdict], width: int = 48) -> list[str]:
    images, drivers, cells = grid(verdicts)
    rows = [["image", *drivers]] + [[img, *(cell_text(cells.get((img, d)))[:width] for d in drivers)]
                                     for img in images]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]


def page(verdicts: Sequence[Verdict], title: str = "fuselab containment matrix") -> str:
    images, drivers, cells = grid(verdicts)
    head = "".join(f"<th>{html.escape(d)}</th>" for d in drivers)
    body: list[str] = []
    details: list[str] = []
    for img in images:
        tds = []
        for d in drivers:
            v = cells.get((img, d))
            if v is None:
                tds.append("<td>-</td>")
                continue
            anchor = f"e{len(details)}"
            steps = " ".join(f"{s.name}={s.status}" for s in v.steps)
            link = f' <a href="#{anchor}">evidence</a>' if v.evidence else ""
            tds.append(f'<td style="background:{COLOURS.get(v.verdict, "#fff")}"><b>{html.escape(v.verdict)}</b>'
                       f"{link}<br><small>{html.escape('; '.join(v.splats))}</small>"
                       f"<br><small>{html.escape(steps)} · server: {html.escape(v.server)} · {v.seconds:.1f}s"
                       "</small></td>")
            if v.evidence:
                details.append(f'<h3 id="{anchor}">{html.escape(img)} × {html.escape(d)}</h3>'
                               f"<pre>{html.escape(v.evidence)}</pre>")
        body.append(f"<tr><th>{html.escape(img)}</th>{''.join(tds)}</tr>")
    counts = {k: sum(v.verdict == k for v in verdicts) for k in COLOURS}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #999;padding:4px;vertical-align:top}"
            "table{border-collapse:collapse}pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style>"
            f"<h1>{html.escape(title)}</h1><p>{summary}</p><table><tr><th>image</th>{head}</tr>"
            f"{''.join(body)}</table>{''.join(details)}")
