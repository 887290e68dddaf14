"""What validation.csv says: per (strategy, φ) the seeds' accuracy and cost (`summarize`), and per φ
whether compound scaling beats the best single-dimension baseline beyond the seed spread (`verdict`).

Analysis only, returning DataFrames and table rows: `validation.validate` plans and trains,
`outputs.runs` writes and reads validation.csv; `report`, `scalesearch validate`, validation.png and
the family's marks (`checks_by_phi`) read these tables.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from scalesearch.outputs.runs import COMPOUND

if TYPE_CHECKING:
    import pandas as pd

# Below this many seeds a standard deviation says little; the verdict says so.
FEW_SEEDS = 5
# A baseline trained this far (L∞ share distance) from its pure dimension is a mixed rule rather
# than the single-dimension rule it is named after, and the verdict names it: at 0.25 it spends over
# a quarter of its budget on other dimensions. Measured: the tiny test space's nearest-to-depth
# network at φ = 1 is 0.20 off (depth comes in whole blocks), the shipped EfficientNet proxy's
# nearest-to-resolution network at φ = 1 is 0.36 off (whole pixels after its strides).
FAR_FROM_PURE = 0.25


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, φ): seeds trained, mean / std / min / max accuracy, the measured cost, the
    network trained and its share error.

    std is the sample standard deviation over seeds (NaN with one seed). Strategies that were
    infeasible at a φ keep a row with n = 0 and status "infeasible", so tables can say so. Files of
    older validations, without the network and share columns, read as NaN there.
    """
    import pandas as pd

    def mean_of(group: pd.DataFrame, column: str) -> float:
        if column not in group:
            return math.nan
        values = pd.to_numeric(group[column], errors="coerce").dropna()
        return float(values.mean()) if len(values) else math.nan

    out = []
    for (strategy, phi), group in rows.groupby(["strategy", "phi"], sort=False):
        trained = group[group["status"] == "completed"]
        accuracy = pd.to_numeric(trained["final_val_accuracy"])
        networks = group["network"].dropna().astype(str) if "network" in group else pd.Series([], dtype=str)
        out.append(
            {
                "strategy": strategy,
                "phi": float(phi),
                "n": int(len(trained)),
                "mean": float(accuracy.mean()) if len(trained) else math.nan,
                "std": float(accuracy.std(ddof=1)) if len(trained) > 1 else math.nan,
                "min": float(accuracy.min()) if len(trained) else math.nan,
                "max": float(accuracy.max()) if len(trained) else math.nan,
                "flops": mean_of(group, "flops"),
                "flops_ratio": mean_of(group, "flops_ratio"),
                "constraint_ratio": mean_of(group, "constraint_ratio"),
                "network": networks.iloc[0] if len(networks) else "",
                "share_error": mean_of(group, "share_error"),
                "status": "infeasible" if (group["status"] == "infeasible").all() else
                          ("completed" if len(trained) else "failed"),
            }
        )  # fmt: skip
    return pd.DataFrame(out)


def verdict(summary: pd.DataFrame) -> pd.DataFrame:
    """Per φ: compound's mean minus the best baseline's mean, the seed spread, and whether it exceeds it.

    `outcome` is the call in one word: "better" or "worse" (compound against the best baseline, beyond
    the spread), "tied" (within it), "same network" (the best baseline trained compound's own network),
    "no call" (one seed), "base" (φ = 0); `call` says it in words.

    The spread is √(s_c² + s_b²), with s the standard deviation over seeds of compound and of that
    baseline: how much one seed of each differs by chance. The difference "exceeds" the spread only
    when |difference| > spread; with one seed there is no spread and no call is made. The call also
    names a baseline that trained compound's own network (the rule is then that single dimension, and
    compound is compared with the best baseline that trained another network; "same network" when
    there is none), and every baseline trained farther than FAR_FROM_PURE from its pure dimension:
    those compare less than their names say.
    """
    import pandas as pd

    rows = []
    for phi, group in summary.groupby("phi", sort=True):
        compound = group[(group["strategy"] == COMPOUND) & (group["n"] > 0)]
        baselines = group[(group["strategy"] != COMPOUND) & (group["n"] > 0)]
        infeasible = sorted(group[group["status"] == "infeasible"]["strategy"])
        row: dict[str, Any] = {"phi": float(phi), "compound": math.nan, "best_baseline": "", "baseline": math.nan,
                               "difference": math.nan, "spread": math.nan, "exceeds": False, "outcome": "",
                               "call": ""}  # fmt: skip
        if compound.empty or baselines.empty:
            row["call"] = "nothing to compare" + (f" (infeasible: {', '.join(infeasible)})" if infeasible else "")
            rows.append(row)
            continue
        ranked = baselines.sort_values("mean", ascending=False, kind="stable")
        own = str(compound["network"].iloc[0])
        same = (
            ranked[(ranked["network"] == own) & (ranked["network"] != "")] if "network" in ranked else ranked.iloc[:0]
        )
        others = ranked.drop(same.index)
        # A baseline that trained compound's own network is the rule itself (the rule is that single
        # dimension): compound is then compared with the best baseline that trained another network.
        best = ranked.iloc[0] if same.empty or others.empty else others.iloc[0]
        c_mean, c_std = float(compound["mean"].iloc[0]), float(compound["std"].iloc[0])
        spread = math.sqrt(c_std**2 + float(best["std"]) ** 2)
        difference = c_mean - float(best["mean"])
        exceeds = bool(math.isfinite(spread) and abs(difference) > spread)
        same_network = not same.empty and others.empty
        itself = (
            f"{same.iloc[0]['strategy']} trained compound's own network (the rule is {same.iloc[0]['strategy']} "
            "scaling itself); against the best other dimension: "
            if not same.empty and not others.empty
            else ""
        )
        if phi == 0:
            outcome, call = "base", "phi 0 is the base model for every strategy"
        elif same_network:
            outcome = "same network"
            call = (
                f"{best['strategy']} trained compound's own network (no purer {best['strategy']} network on the budget)"
            )
        elif not math.isfinite(spread):
            outcome, call = "no call", "one seed: no spread, no call"
        elif exceeds:
            outcome = "better" if difference > 0 else "worse"
            call = itself + ("compound better" if difference > 0 else f"{best['strategy']} better")
        else:
            outcome, call = "tied", itself + "within seed noise"
        if phi != 0:
            far = [
                f"{b['strategy']} {float(b['share_error']):.2f}"
                for b in group[group["strategy"] != COMPOUND].to_dict("records")
                if math.isfinite(float(b.get("share_error", math.nan))) and float(b["share_error"]) > FAR_FROM_PURE
            ]
            if far:
                call += f"; far from a pure dimension (share error): {', '.join(far)}"
        if infeasible:
            call += f"; infeasible: {', '.join(infeasible)}"
        row.update(compound=c_mean, best_baseline=str(best["strategy"]), baseline=float(best["mean"]),
                   difference=difference, spread=spread, exceeds=exceeds, outcome=outcome, call=call)  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def verdict_note(rows: pd.DataFrame) -> str:
    """One sentence on how the spread was computed and how far to trust it."""
    seeds = int(rows["seed"].nunique()) if len(rows) else 0
    note = (
        f"spread = sqrt(s_compound^2 + s_baseline^2), s the standard deviation over {seeds} seed(s); "
        "'exceeds' means |difference| > spread."
    )
    if seeds < FEW_SEEDS:
        note += f" With {seeds} seed(s) the spread itself is a rough estimate: read small differences as ties."
    return note


def verdict_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The verdict as rows for text/Markdown tables (accuracies as fixed decimals, NaN as blank)."""

    def number(value: Any, signed: bool = False) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return ""
        return f"{value:+.4f}" if signed else f"{value:.4f}"

    return [
        {
            "phi": f"{row['phi']:g}",
            "compound": number(row["compound"]),
            "best baseline": f"{row['best_baseline']} {number(row['baseline'])}".strip(),
            "difference": number(row["difference"], signed=True),
            "spread": number(row["spread"]),
            "exceeds": "yes" if row["exceeds"] else "no",
            "outcome": row.get("outcome", ""),
            "verdict": row["call"],
        }
        for row in table.to_dict("records")
    ]


VERDICT_COLUMNS = ["phi", "compound", "best baseline", "difference", "spread", "exceeds", "outcome", "verdict"]


def checks_by_phi(table: pd.DataFrame) -> dict[float, str]:
    """The verdict's outcome per φ (φ = 0, the base, left out): what the family marks its variants with."""
    return {float(row["phi"]): str(row.get("outcome", "")) for row in table.to_dict("records") if row["phi"] != 0}
