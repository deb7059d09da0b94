"""Images × drivers matrices of containment verdicts: a terminal table and a self-contained HTML page.

A cell says what happened and how far the image got: REFUSED (the driver would not mount it, with
the reason), CONTAINED or CLEAN (with the furthest step when it stopped short), BREACH or FINDING
(with the first splat), HUNG beside a contained server that stopped answering, ERROR when the lab
failed to judge, n/a when the driver does not take this kind of image."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence

from pytest_fuselab.judge.drivers import DRIVERS
from pytest_fuselab.judge.triage import NOT_APPLICABLE, why_refused
from pytest_fuselab.judge.verdict import Verdict
from pytest_fuselab.text import printable

COLOURS = {"contained": "#d8f3dc", "clean": "#d8f3dc", "refused": "#dbe4ff", "hung": "#fff3bf",
           "breach": "#ffb3b3", "finding": "#ffe8a3", "error": "#e5dbff", "skipped": "#e9ecef", "n/a": "#e9ecef"}


def grid(verdicts: Sequence[Verdict]) -> tuple[list[str], list[str], dict[tuple[str, str], Verdict]]:
    images = list(dict.fromkeys(v.image for v in verdicts))
    drivers = list(dict.fromkeys(v.driver for v in verdicts))
    return images, drivers, {(v.image, v.driver): v for v in verdicts}


def label(v: Verdict) -> str:
    """The cell's outcome: the verdict, or refused, hung, n/a for what the verdict alone hides."""
    driver = DRIVERS.get(v.driver)
    if v.verdict == "n/a" or (v.verdict in NOT_APPLICABLE and driver is not None and driver.fuse):
        return "n/a"
    if v.verdict in ("contained", "clean") and v.reached == "refused":
        return "refused"
    if v.verdict in ("contained", "clean") and v.hung:
        return "hung"
    return v.verdict


def detail(v: Verdict) -> str:
    """What to say beside the outcome: the first splat, the refusal's reason, the step it stopped at."""
    shown = label(v)
    if v.splats:
        return v.splats[0]
    if shown == "refused":
        return why_refused(v)
    if shown == "hung":
        return v.hung.removeprefix("server hung ")  # "during walk (connection aborted)"
    if shown == "error":
        said = v.steps[0].said.strip().splitlines() if v.steps else []
        return v.hung or (said[-1] if said else "")
    if shown in ("contained", "clean") and v.reached and v.reached != "checked":
        return v.reached
    return ""


def cell_text(v: Verdict | None) -> str:
    if v is None:
        return "-"
    shown = label(v)
    words = detail(v)
    return printable((shown if shown == "n/a" else shown.upper()) + (f" ({words})" if words else ""), lines=False)


def terminal(verdicts: Sequence[Verdict], width: int = 48) -> list[str]:
    images, drivers, cells = grid(verdicts)
    rows = [["image", *drivers]] + [[printable(img, lines=False), *(cell_text(cells.get((img, d)))[:width]
                                                                    for d in drivers)] for img in images]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]


def _cell(v: Verdict, anchor: str) -> str:
    steps = " ".join(f"{s.name}={s.status}" for s in v.steps)
    link = f' <a href="#{anchor}">evidence</a>' if v.evidence else ""
    facts = [f"reached: {v.reached or '-'}"] + [f"{k}: {x}" for k, x in (("refused", v.refusal), ("hung", v.hung)) if x]
    return (f'<td style="background:{COLOURS.get(label(v), "#fff")}"><b>{html.escape(label(v))}</b>'
            f"{link}<br><small>{html.escape('; '.join(v.splats))}</small>"
            f"<br><small>{html.escape(' · '.join(facts))}</small>"
            f"<br><small>{html.escape(steps)} · server: {html.escape(v.server)} · {v.seconds:.1f}s</small></td>")


def page(verdicts: Sequence[Verdict], title: str = "fuselab containment matrix", note: str = "") -> str:
    """The matrix as one HTML page with no outside resources; `note` says, e.g., that the run was interrupted."""
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
            tds.append(_cell(v, anchor))
            if v.evidence:
                details.append(f'<h3 id="{anchor}">{html.escape(img)} × {html.escape(d)}</h3>'
                               f"<pre>{html.escape(v.evidence)}</pre>")
        body.append(f"<tr><th>{html.escape(img)}</th>{''.join(tds)}</tr>")
    counts = Counter(label(v) for v in verdicts)
    summary = ", ".join(f"{counts[k]} {k}" for k in COLOURS if counts[k])
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #999;padding:4px;vertical-align:top}"
            "table{border-collapse:collapse}pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style>"
            f"<h1>{html.escape(title)}</h1>{f'<p><b>{html.escape(note)}</b></p>' if note else ''}"
            f"<p>{summary}</p><table><tr><th>image</th>{head}</tr>"
            f"{''.join(body)}</table>{''.join(details)}")
