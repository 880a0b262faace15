"""What the read-only commands print (runs, inspect, feature, concepts, compare, attribute, intervene), as Rich
tables and text or as JSON."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vitsae_tui.engine.errors import OutOfRange
from vitsae_tui.engine.run_details import describe_run
from vitsae_tui.engine.text import MAX_MESSAGE, shown
from vitsae_tui.engine.workspace import KINDS, Workspace
from vitsae_tui.formatting import table_cell, table_title


def print_runs(ws: Workspace, console: Console | None = None) -> None:
    """Every run by kind, newest first: name, state and time on one line, its details on the next (never cut)."""
    console = console or Console()
    console.print(Text(f"workspace: {shown(ws.root)}"))
    for kind in KINDS:
        runs = ws.runs(kind)
        if not runs:
            continue
        console.print(Text(kind, style="bold"))
        width = max(len(r.name) for r in runs)
        for run in runs:
            updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.updated)) if run.updated else "-"
            console.print(Text(f"  {run.name:<{width}}  {run.state:<11} {updated}"))
            details = describe_run(run)
            if details:
                console.print(Text(f"      {shown(details, MAX_MESSAGE)}", style="dim"))
    if not any(ws.runs(kind) for kind in KINDS):
        console.print("no runs yet: `vitsae-tui train-model` starts one, or open the app with `vitsae-tui`")


def print_image_features(index, image: int, token: int | None, top: int, console: Console | None = None) -> None:
    """The reference's inference output, for every patch: top features with activation, density and label."""
    console = console or Console()
    if not 0 <= image < index.n_images:
        raise OutOfRange(f"image {image} is outside 0..{index.n_images - 1}")
    grid = index.grid
    if token is not None and not 0 <= token < grid * grid:
        raise OutOfRange(f"token {token} is outside 0..{grid * grid - 1}")
    info = index.image_info(image)
    table = Table(
        title=Text(f"image {image} ({info.class_name}, {info.source}) · top {top} features per patch"),
        title_justify="left",
    )
    table.add_column("patch", justify="right")
    table.add_column("row,col")
    table.add_column("features (id: activation, density, label)")
    for t in [token] if token is not None else range(grid * grid):
        cells = [
            f"{j}: {v:.3g} ({index.density(j):.1e})" + (f" {index.label(j)}" if index.label(j) else "")
            for j, v in index.top_features(image, t, top)
        ]
        table.add_row(str(t), f"{t // grid},{t % grid}", Text("  ".join(cells) or "(no feature fires)"))
    console.print(table)


def print_feature(index, feature: int, console: Console | None = None) -> None:
    console = console or Console()
    summary = index.summary(feature)
    console.print(Text.assemble((f"feature {feature}", "bold"), f" — {summary.label}" if summary.label else ""))
    console.print(Text(summary.stats_line(digits=4)))
    console.print(Text(summary.effect_line(digits=3)))
    if summary.causal:
        console.print(Text(summary.causal_line(digits=3)))
    if summary.fires_on:
        console.print(Text(summary.fires_on_line(5)))
    for line in summary.concept_lines(digits=3, below_bar=True):
        console.print(Text(line))
    table = Table(title="top examples", title_justify="left")
    for column in ("rank", "image", "patch", "activation", "class"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for rank, (image, token, value) in enumerate(index.top_examples(feature)[:16], 1):
        table.add_row(str(rank), str(image), str(token), f"{value:.4g}", Text(index.image_info(image).class_name))
    console.print(table)
    bands = index.band_examples(feature)
    for b, examples in enumerate(bands):
        if examples:
            console.print(
                f"band {b + 1} of {len(bands)}: " + ", ".join(f"img {i}/p{t} {v:.3g}" for i, t, v in examples)
            )


def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def attribution_json(bench, attribution) -> dict:
    """The attribution as the CLI's --json prints it (and the browser shows it)."""
    from vitsae_tui.engine.workbench import probabilities

    probs = _rounded(probabilities(attribution.logits))
    return {
        "image": attribution.image,
        "class_names": [shown(name) for name in bench.class_names],
        "target": attribution.target,
        "logits_clean": _rounded(attribution.logits),
        "logits_spliced": _rounded(attribution.logits),
        "logits_after": _rounded(attribution.logits),  # attribution edits nothing
        "probs_before": probs,
        "probs_after": probs,
        "features": [
            {
                "feature": row["feature"],
                "attribution": round(row["attribution"], 6),
                "exact_effect": None if row["exact_effect"] is None else round(row["exact_effect"], 6),
            }
            for row in attribution.features
        ],
        "patch_grid": [_rounded(row) for row in attribution.patch_grid],
        "error_share": round(attribution.error_share, 6),
        "rank_correlation": attribution.rank_correlation,
        "sufficiency": bench.sufficiency(attribution),
    }


def edit_json(bench, result) -> dict:
    from vitsae_tui.engine.workbench import probabilities

    return {
        "image": result.image,
        "class_names": [shown(name) for name in bench.class_names],
        "target": result.target,
        "edits": [
            {
                "features": list(edit.features),
                "mode": edit.mode,
                "value": edit.value,
                "patches": list(edit.patches) if edit.patches is not None else "all",
            }
            for edit in result.edits
        ],
        "logits_clean": _rounded(result.logits_clean),
        "logits_spliced": _rounded(result.logits_spliced),
        "logits_after": _rounded(result.logits_after),
        "probs_before": _rounded(probabilities(result.logits_spliced)),
        "probs_after": _rounded(probabilities(result.logits_after)),
        "patch_change": [_rounded(row) for row in result.patch_change],
    }


def print_attribution(bench, attribution, console: Console | None = None) -> None:
    console = console or Console()
    name = shown(bench.class_names[attribution.target]) if attribution.target < len(bench.class_names) else "?"
    checked = sum(row["exact_effect"] is not None for row in attribution.features)
    rho = attribution.rank_correlation
    console.print(
        Text(
            f"image {attribution.image} · class {attribution.target} ({name}) logit "
            f"{attribution.logits[attribution.target]:.3f} · error term {attribution.error_share:+.3f} · "
            f"attribution vs exact ablation over {checked} features: Spearman "
            + (f"{rho:.2f}" if rho is not None else "n/a")
        )
    )
    table = Table(title="features by |attribution| (f · ∂logit/∂f, summed over patches)", title_justify="left")
    for column in ("feature", "attribution", "exact effect", "label"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for row in attribution.features[:16]:
        exact = row["exact_effect"]
        table.add_row(
            str(row["feature"]),
            f"{row['attribution']:+.4f}",
            "" if exact is None else f"{exact:+.4f}",
            Text(bench.index.label(row["feature"])),
        )
    console.print(table)
    console.print("per patch (row by row):")
    for grid_row in attribution.patch_grid:
        console.print("  " + " ".join(f"{v:+7.3f}" for v in grid_row))


def print_edit(bench, result, console: Console | None = None) -> None:
    from vitsae_tui.engine.workbench import probabilities

    console = console or Console()
    before, after = probabilities(result.logits_spliced), probabilities(result.logits_after)
    console.print(Text(f"image {result.image} · " + "; ".join(edit.describe() for edit in result.edits)))
    table = Table(title="classes, before → after", title_justify="left")
    for column in ("class", "logit", "probability"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c in np.argsort(-np.maximum(before, after))[:10]:
        name = shown(bench.class_names[c]) if c < len(bench.class_names) else str(c)
        table.add_row(
            Text(name),
            f"{result.logits_spliced[c]:+.3f} → {result.logits_after[c]:+.3f}",
            f"{before[c]:.3f} → {after[c]:.3f}",
        )
    console.print(table)
    console.print(f"change of class {result.target}'s logit when the edit is made on one patch only (row by row):")
    for grid_row in result.patch_change:
        console.print("  " + " ".join(f"{v:+7.3f}" for v in grid_row))


def print_concepts(report, console: Console | None = None) -> None:
    """Concept recovery tables: every detector on held-out images, k-sparse probing, absorption."""
    from vitsae_tui.engine.concepts import MATCH_F1, MATCH_PARENT_MCC, decisive
    from vitsae_tui.engine.feature_index import MATCH_BAR

    console = console or Console()
    images = "validation images" if report.heldout_split == "val" else "held-out training images"
    console.print(
        Text(
            f"selected on {report.train_images} training images, scored on {report.heldout_images} {images}; "
            f"F1 with 95% bootstrap interval over images; a feature matches when {MATCH_BAR}"
        )
    )
    compact = {"box": box.SIMPLE_HEAD, "padding": 0, "show_edge": False, "title_justify": "left"}  # fits 80 columns
    sae = Table(title="the SAE feature chosen for each concept, on held-out patches", **compact)
    for column in ("concept", "prev", "feat", "F1 [95%]", "MCC", "parent MCC [95%]", "AUROC"):
        sae.add_column(column, justify="left" if column == "concept" else "right", no_wrap=True)
    for c in report.concepts:
        d = c.sae
        sae.add_row(
            Text(shown(c.concept)),
            f"{c.prevalence:.2f}",
            f"{c.feature}" + (" ✓" if c.matched else ""),
            f"{decisive(d.f1, MATCH_F1)} [{d.f1_low:.2f},{d.f1_high:.2f}]",
            f"{d.mcc:.2f}",
            f"{decisive(d.parent_mcc, MATCH_PARENT_MCC)} [{d.parent_mcc_low:.2f},{d.parent_mcc_high:.2f}]",
            f"{d.auroc:.2f}",
        )
    console.print(sae)
    versus = Table(
        title="against the best neuron, a probe on all neurons and the object baseline (F1 · in parent MCC)", **compact
    )
    for column in ("concept", "SAE", "neuron", "probe", "object"):
        versus.add_column(column, justify="left" if column == "concept" else "right", no_wrap=True)
    for c in report.concepts:
        versus.add_row(
            Text(shown(c.concept)),
            *(f"{d.f1:.2f} · {d.parent_mcc:.2f}" for d in (c.sae, c.neurons, c.probe, c.baseline)),
        )
    console.print(versus)
    probing = Table(title="k-sparse probing (mean held-out F1 / AUROC over concepts)", **compact)
    for column in ("k", "SAE latents", "neurons"):
        probing.add_column(column, justify="right")
    for p in report.sparse_probing:
        probing.add_row(str(p.k), f"{p.sae_f1:.3f} / {p.sae_auroc:.3f}", f"{p.neuron_f1:.3f} / {p.neuron_auroc:.3f}")
    console.print(probing)
    absorbed = Table(title="absorption and splitting (parent feature across its children)", **compact)
    for column in ("parent", "feat", "recall min", "on child", "max", "split", "absorbed"):
        absorbed.add_column(column, justify="left" if column in ("parent", "on child") else "right", no_wrap=True)
    for a in report.absorption:
        absorbed.add_row(
            Text(shown(a.parent)),
            str(a.feature),
            f"{a.recall_min:.2f}",
            Text(shown(a.worst_child)),
            f"{a.recall_max:.2f}",
            str(a.split_features),
            f"{a.absorbed_fraction:.1%}",
        )
    console.print(absorbed)


def compare_json(found) -> list[dict]:
    """Each SAE of the comparison with its fields (run, arch, sparsity, expansion, state, step, total_steps,
    metrics by key, pareto, live)."""
    return [dataclasses.asdict(p) for p in found]


def print_compare(activations: str, found, console: Console | None = None) -> None:
    """Two tables with one row per SAE of the set: reconstruction, then the classifier with it spliced in; ★ marks
    the L0-FVU Pareto set."""
    from vitsae_tui.engine import metrics

    console = console or Console()
    if not found:
        console.print(
            Text(
                f"no evaluated SAE on activations/{shown(activations)} yet; train one with "
                f"`vitsae-tui train-sae --activations {shown(activations)}`"
            )
        )
        return
    titles = (
        f"SAEs on activations/{shown(activations)}: reconstruction of held-out activations (★ Pareto-optimal in L0 "
        "and FVU; EV explained variance, L2 mean ‖x̂‖/‖x‖, cos mean max decoder cosine)",
        "the classifier with each SAE spliced in, on held-out images",
    )
    for title, columns in zip(titles, (metrics.COMPARE_RECONSTRUCTION, metrics.COMPARE_SPLICED)):
        table = Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 1, 0, 1),
            pad_edge=False,
            collapse_padding=True,
        )
        table.add_column("run", no_wrap=True)
        table.add_column("SAE", no_wrap=True)
        for metric in columns:
            table.add_column(table_title(metric), justify="right", no_wrap=True)
        for p in found:
            cells = [table_cell(metric, p.value(metric)) for metric in columns]
            done = "" if p.step >= p.total_steps else f" {p.step}/{p.total_steps}"
            run = Text(("★ " if p.pareto else "  ") + shown(p.run) + done)
            table.add_row(run, p.label, *cells)
        console.print(table)
