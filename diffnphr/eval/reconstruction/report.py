"""The report of `eval reconstruction`: tables, paired differences, the steps curve, consistency and transfer."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from scipy import stats

from diffnphr.eval.metrics import REPORTED
from diffnphr.eval.reconstruction.cache import ResultCache, result_key, transfer_key
from diffnphr.eval.reconstruction.methods import BASELINES, DIFFUSION_METHODS, TRANSFER_METHODS, DiffusionSampling
from diffnphr.eval.reconstruction.renders import SLOTS_PER_IDENTITY, EvalRenders

# Regions of every table: raw, and after the similarity alignment that removes the head's size
# (`eval.heads.compare_head`), which one photo at an unknown distance cannot show; results cached
# before the alignment existed have only the raw ones.
REGIONS = ("head", "face", "aligned_head", "aligned_face")
PAIRED_KEYS = ("chamfer_l1_mm", "f_score_2.5mm")


def _summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and median per metric and region (`REGIONS`) over records without errors, and the error count."""
    valid = [r for r in records if "error" not in r]
    summary: dict[str, Any] = {"count": len(valid), "failures": len(records) - len(valid)}
    for region in REGIONS:
        summary[region] = (
            {
                key: {
                    "mean": statistics.fmean(r[region][key] for r in valid),
                    "median": statistics.median(r[region][key] for r in valid),
                }
                for key in REPORTED
            }
            if valid and all(region in r for r in valid)
            else {}
        )
    return summary


def paired_differences(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-render differences, ours − theirs, of Chamfer and F@2.5 mm per region (`REGIONS`): mean, standard
    error and 95 % interval (Student's t), and on how many renders ours is closer.

    Renders are paired by position; a pair where either side failed is left out. The means of
    a table can differ by less than the renders' spread: this says whether a gap is more than
    noise (an interval that holds 0 is a tie).
    """
    pairs = [(a, b) for a, b in zip(ours, theirs) if "error" not in a and "error" not in b]
    result: dict[str, Any] = {"renders": len(pairs)}
    if len(pairs) < 2:
        return result
    half_width = float(stats.t.ppf(0.975, len(pairs) - 1))
    for region in REGIONS:
        if not all(region in a and region in b for a, b in pairs):
            continue
        entry: dict[str, Any] = {}
        for key in PAIRED_KEYS:
            differences = [a[region][key] - b[region][key] for a, b in pairs]
            mean = statistics.fmean(differences)
            error = statistics.stdev(differences) / math.sqrt(len(differences))
            entry[key] = {
                "mean_difference": mean,
                "standard_error": error,
                "ci95": [mean - half_width * error, mean + half_width * error],
            }
        entry["ours_closer"] = sum(a[region]["chamfer_l1_mm"] < b[region]["chamfer_l1_mm"] for a, b in pairs)
        result[region] = entry
    return result


def build_report(
    cache: ResultCache,
    renders: EvalRenders,
    scope: range,
    methods: Sequence[str],
    default: DiffusionSampling,
    settings: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """The report over the cached results in `scope`: a table over the renders every method has finished.

    `methods` are method names (`Method.name`), `default` the pipeline's default method.
    """
    setting, default = default, default.name
    finished = [i for i in scope if all(result_key("recon", m, i) in cache for m in methods)]
    table = {m: _summarise([cache.results[result_key("recon", m, i)] for i in finished]) for m in methods}
    pending = {m: sum(result_key("recon", m, i) not in cache for i in scope) for m in methods}
    paired = {}
    if default in methods:
        ours = [cache.results[result_key("recon", default, i)] for i in finished]
        paired = {
            m: paired_differences(ours, [cache.results[result_key("recon", m, i)] for i in finished])
            for m in methods
            if m not in (default, "sampling_floor")
        }
    curve = [
        {"steps": m.steps, "guidance": m.guidance, **headline(table[m.name])}
        for m in DIFFUSION_METHODS
        if m.name in table
    ]
    consistency = consistency_summary(
        [
            cache.results[result_key("consistency", default, i)]
            for i in scope
            if result_key("consistency", default, i) in cache
        ]
    )
    transfer = {
        m: _summarise(
            [cache.results[transfer_key(default, m, i)] for i in scope if transfer_key(default, m, i) in cache]
        )
        for m in TRANSFER_METHODS
    }
    return {
        "settings": {k: v for k, v in settings.items() if k != "methods"},
        "eval_set": {
            "identities": len(scope) // SLOTS_PER_IDENTITY,
            "renders": len(scope),
            "renders_in_set": len(renders),
            "slots_per_identity": SLOTS_PER_IDENTITY,
            "fingerprint": renders.fingerprint(),
        },
        "compared_renders": len(finished),
        "methods": table,
        "paired": {"method": default, "against": paired},
        "pending": {m: n for m, n in pending.items() if n},
        "steps_curve": curve,
        "consistency": {"method": default, **consistency},
        "transfer": {"method": default, **transfer},
        "default_setting": {"steps": setting.steps, "guidance": setting.guidance, "samples": setting.samples},
        "goal": _goal(table, default),
        "gap_closed": gap_closed(table, default),
        "notes": notes,
    }


def headline(summary: dict[str, Any]) -> dict[str, float | None]:
    """A method's mean head Chamfer and F@2.5 mm (None before it has results)."""
    if not summary.get("head"):
        return {"chamfer_l1_mm": None, "f_score_2.5mm": None}
    return {
        "chamfer_l1_mm": summary["head"]["chamfer_l1_mm"]["mean"],
        "f_score_2.5mm": summary["head"]["f_score_2.5mm"]["mean"],
    }


def gap_closed(
    table: dict[str, Any], method: str, floor: str = "mean", ceiling: str = "decoder_fit"
) -> dict[str, float]:
    """Per region, the share of the mean Chamfer gap from knowing nothing (`floor`: the mean latent) to the
    decoder's ceiling (the fitted latents) that `method` closes: 0 no better than the mean, 1 the ceiling.
    The issue's target is stated on the aligned regions (size removed)."""
    closed = {}
    for region in REGIONS:
        means = [
            table.get(name, {}).get(region, {}).get("chamfer_l1_mm", {}).get("mean")
            for name in (floor, method, ceiling)
        ]
        if None not in means and means[0] != means[2]:
            closed[region] = (means[0] - means[1]) / (means[0] - means[2])
    return closed


def _goal(table: dict[str, Any], default: str) -> dict[str, Any]:
    """Whether the default diffusion setting beats every baseline on mean head Chamfer and F@2.5 mm."""
    if not table.get(default, {}).get("head"):
        return {"method": default, "met": None}
    ours = headline(table[default])
    beats = {}
    for baseline in (method.name for method in BASELINES):
        theirs = headline(table.get(baseline, {}))
        if theirs["chamfer_l1_mm"] is not None:
            beats[baseline] = {
                "chamfer": ours["chamfer_l1_mm"] < theirs["chamfer_l1_mm"],
                "f_score_2.5mm": ours["f_score_2.5mm"] > theirs["f_score_2.5mm"],
            }
    return {"method": default, "beats": beats, "met": all(all(b.values()) for b in beats.values()) if beats else None}


def format_reconstruction_summary(report: dict[str, Any]) -> str:
    """A markdown summary of an `evaluate_reconstruction` report: the table, steps curve, consistency, transfer."""
    settings, evaluated = report["settings"], report["eval_set"]
    lines = [
        f"Evaluation set: {evaluated['identities']} held-out identities × {evaluated['slots_per_identity']} "
        f"expressions ({evaluated['renders']} renders); meshes at {settings['resolution']}³, "
        f"{settings['points']:,} points per side; mean (median) over the {report['compared_renders']} renders "
        f"every method has finished.",
        "",
        "| method | region | Chamfer-L1 mm | normal cons. | F@1 mm | F@2.5 mm | F@5 mm | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, summary in report["methods"].items():
        for region in REGIONS:
            if not summary.get(region):
                continue
            cells = [f"{summary[region][k]['mean']:.3f}" for k in REPORTED]
            cells[0] = (
                f"{summary[region]['chamfer_l1_mm']['mean']:.3f} ({summary[region]['chamfer_l1_mm']['median']:.3f})"
            )
            lines.append(f"| {method} | {region} | " + " | ".join(cells) + f" | {summary['failures']} |")
    paired = report["paired"]
    rows = [(m, region, d) for m, d in paired["against"].items() for region in REGIONS if region in d]
    if rows:
        lines += [
            "",
            f"Paired per render, {paired['method']} − method (mean [95 % interval]; negative Chamfer and "
            "positive F@2.5 favour the former):",
            "",
            "| method | region | renders | Δ Chamfer-L1 mm | closer on | Δ F@2.5 mm |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {region} | {d['renders']} | {_interval(d[region]['chamfer_l1_mm'])} | "
            f"{d[region]['ours_closer']} of {d['renders']} | {_interval(d[region]['f_score_2.5mm'])} |"
            for m, region, d in rows
        ]
    if report["steps_curve"]:
        lines += ["", "| DDIM steps | guidance | Chamfer-L1 mm (head) | F@2.5 mm (head) |", "|---|---|---|---|"]
        lines += [
            f"| {row['steps']} | {row['guidance']:g} | {_number(row['chamfer_l1_mm'])} | "
            f"{_number(row['f_score_2.5mm'])} |"
            for row in report["steps_curve"]
        ]
    consistency = report["consistency"]
    if consistency.get("pairs"):
        lines += [
            "",
            f"Consistency ({consistency['method']}, {consistency['pairs']} heads): Chamfer between the "
            f"reconstructions of two renders of the same head {consistency['same_head_chamfer_mm']:.3f} mm, to "
            f"another head's {consistency['other_head_chamfer_mm']:.3f} mm; ratio {consistency['ratio']:.3f}.",
        ]
    transfer = report["transfer"]
    rows = [(m, transfer[m]) for m in TRANSFER_METHODS if transfer[m]["count"]]
    if rows:
        lines += ["", "| expression transfer | region | Chamfer-L1 mm | F@2.5 mm | failed |", "|---|---|---|---|---|"]
        lines += [
            f"| {m} | {region} | {s[region]['chamfer_l1_mm']['mean']:.3f} | {s[region]['f_score_2.5mm']['mean']:.3f} "
            f"| {s['failures']} |"
            for m, s in rows
            for region in ("head", "face")
        ]
    if report.get("gap_closed"):
        shares = ", ".join(f"{region} {share:.0%}" for region, share in report["gap_closed"].items())
        lines += ["", f"Gap closed by {report['paired']['method']} from the mean latent to the decoder fit: {shares}."]
    goal = report["goal"]
    if goal.get("met") is not None:
        lost = [
            f"{b} ({', '.join(k for k, won in r.items() if not won)})"
            for b, r in goal["beats"].items()
            if not all(r.values())
        ]
        lines += [
            "",
            f"Goal ({goal['method']} beats every baseline on head Chamfer and F@2.5 mm): "
            + ("met." if goal["met"] else "not met: " + "; ".join(lost) + "."),
        ]
    if report["pending"]:
        lines += [
            "",
            "Pending (rerun the same command to continue): "
            + ", ".join(f"{m} {n}" for m, n in report["pending"].items()),
        ]
    lines += [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _interval(difference: dict[str, Any]) -> str:
    """A paired difference as "mean [low, high]"."""
    low, high = difference["ci95"]
    return f"{difference['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def consistency_summary(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean Chamfer between a head's two reconstructions, mean to another head's, and their ratio (< 1: consistent)."""
    valid = [item for item in items if "error" not in item]
    if not valid:
        return {"pairs": 0, "failures": len(items)}
    same = statistics.fmean(item["same_head_mm"] for item in valid)
    other = statistics.fmean(item["other_head_mm"] for item in valid)
    return {
        "pairs": len(valid),
        "failures": len(items) - len(valid),
        "same_head_chamfer_mm": same,
        "other_head_chamfer_mm": other,
        "ratio": same / other if other > 0 else math.inf,
    }
