"""``metareg table`` as Markdown, CSV or LaTeX: the same rows and columns, each format's own header.

Markdown and LaTeX say in prose (LaTeX in comments) how each interval was computed; CSV says it in
its column names, so that a script reading it needs nothing else.
"""
from __future__ import annotations

import csv
import io
import math

from metareg.tables import Row

FORMATS = ("markdown", "csv", "latex")


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _p(x: float) -> str:
    return f"{x:.3g}" if x >= 1e-4 else "<1e-4"


def explain(rows: list[Row], by: list[str], baseline: str | None) -> list[str]:
    """The header: protocol, seeds, and which interval is which."""
    t = rows[0].runs[0]
    ways, shots, queries = t.protocol
    seeds = ", ".join(str(r.seed) for r in rows[0].runs)
    lines = [f"Test accuracy (%), {ways}-way {shots}-shot, {queries} queries per class, "
             f"{len(t.episodes.accuracies)} test episodes per run; mean over seeds {seeds}.",
             "± seeds: 95% CI over the seeds' mean accuracies (Student's t, seeds − 1 df). "
             "± episodes: the mean of the runs' own 95% CIs over their test episodes (not pooled)."]
    if baseline is not None:
        lines.append(f"Δ: paired difference from {baseline} in points over the test episodes it shares with each "
                     "row, every seed's episodes pooled (metareg compare's statistics): mean ± 95% CI, paired "
                     "t-test p and Wilcoxon signed-rank p.")
    return lines


def columns(by: list[str], baseline: str | None) -> list[str]:
    cols = [*by, "seeds", "accuracy", "± seeds", "± episodes"]
    return cols + ([f"Δ vs {baseline}", "p (t-test)", "p (Wilcoxon)"] if baseline is not None else [])


def cells(row: Row, baseline: str | None) -> list[str]:
    out = [*row.label, str(len(row.runs)), _pct(row.mean), _pct(row.ci_seeds), _pct(row.ci_episodes)]
    if baseline is None:
        return out
    if row.paired is None:
        return out + ["baseline", "", ""]
    p = row.paired
    return out + [f"{_pct(p.mean, signed=True)} ± {_pct(p.ci95)}", _p(p.t_p), _p(p.wilcoxon_p)]


def markdown(rows: list[Row], by: list[str], baseline: str | None) -> str:
    cols = columns(by, baseline)
    lines = [*explain(rows, by, baseline), "", "| " + " | ".join(cols) + " |",
             "| " + " | ".join("---" if i < len(by) else "---:" for i in range(len(cols))) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r, baseline)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], by: list[str], baseline: str | None) -> str:
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer, lineterminator="\n")
    head = [*by, "seeds", "ways", "shots", "queries", "episodes_per_run", "accuracy_pct", "ci95_seeds_pct",
            "ci95_episodes_mean_of_runs_pct"]
    if baseline is not None:
        head += ["baseline", "paired_diff_pct", "paired_diff_ci95_pct", "paired_t_test_p", "wilcoxon_p",
                 "paired_episodes"]
    w.writerow(head)

    def num(x) -> str:
        return "" if x is None or not math.isfinite(x) else f"{100 * x:.4f}"

    for r in rows:
        t = r.runs[0]
        line = [*r.label, " ".join(str(x.seed) for x in r.runs), *t.protocol, len(t.episodes.accuracies),
                num(r.mean), num(r.ci_seeds), num(r.ci_episodes)]
        if baseline is not None:
            p = r.paired
            line += [baseline] + (["", "", "", "", ""] if p is None else
                                  [num(p.mean), num(p.ci95), f"{p.t_p:.6g}", f"{p.wilcoxon_p:.6g}", p.n])
        w.writerow(line)
    return buffer.getvalue()


def _tex(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(c, c) for c in text)


def latex(rows: list[Row], by: list[str], baseline: str | None) -> str:
    cols = columns(by, baseline)
    head = [_tex(c).replace("±", r"$\pm$").replace("Δ", r"$\Delta$") for c in cols]
    lines = [f"% {line}" for line in explain(rows, by, baseline)]
    lines += ["% needs \\usepackage{booktabs}", r"\begin{tabular}{" + "l" * len(by) + "r" * (len(cols) - len(by)) + "}",
              r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for r in rows:
        lines.append(" & ".join(_tex(c).replace("±", r"$\pm$") for c in cells(r, baseline)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def render(rows: list[Row], by: list[str], baseline: str | None, fmt: str) -> str:
    return {"markdown": markdown, "csv": to_csv, "latex": latex}[fmt](rows, by, baseline)
