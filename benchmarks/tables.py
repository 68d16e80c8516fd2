"""What benchmarks/bench.py reports from its results: the targets of issue 11 (set for a 2-core CPU
machine) checked against the figures, and the table printed without --json, one row function per
section of the results. Nothing here measures or imports more than the standard library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = tuple[str, str, str | None]  # (measurement, value, dotted key of its target or None)

# Targets: name -> (dotted key in the results, comparison, threshold, unit).
TARGETS: dict[str, tuple[str, str, Any, str]] = {
    "predict() / bare forward": ("predict.vs_bare", "<=", 1.5, "x"),
    "reference photos per answer, p95": ("neighbours.worst_p95_ms", "<=", 1.0, "ms"),
    "CLI wall time": ("cli.plain.wall_s", "<", 1.5, "s"),
    "CLI peak RSS": ("cli.plain.peak_rss_mib", "<", 300, "MiB"),
    "CLI --explain wall time": ("cli.explain.wall_s", "<", 2.0, "s"),
    "CLI imports TensorFlow": ("cli.tensorflow_imported", "==", False, ""),
    "app first /predict answer": ("app.first_answer_s", "<", 6.0, "s"),
    "app RSS after requests": ("app.rss_mib", "<", 500, "MiB"),
    "eval throughput": ("eval.images_per_s", ">=", 150, "images/s"),
    "LiteRT/Keras top-1 agreement": ("agreement.top1_agreement", ">=", 0.999, ""),
    "CAM vs Grad-CAM, min Pearson r": ("cam.min_pearson", ">=", 0.99, ""),
}
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
}
STATUS = {True: "pass", False: "MISS", None: "-"}  # a target's pass value, as the table says it

# --- targets ---------------------------------------------------------------------------------


def lookup(results: dict[str, Any], dotted: str) -> Any:
    value: Any = results
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def target_text(op: str, threshold: Any, unit: str) -> str:
    if isinstance(threshold, bool):
        return f"{op} {'yes' if threshold else 'no'}"
    return f"{op} {threshold:g} {unit}".strip()


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and pass (True / False; None where not measured)."""
    return [
        {
            "name": name,
            "key": key,
            "value": (value := lookup(results, key)),
            "target": target_text(op, threshold, unit),
            "pass": None if value is None else bool(COMPARE[op](value, threshold)),
        }
        for name, (key, op, threshold, unit) in TARGETS.items()
    ]


# --- table rows, one function per section ----------------------------------------------------


def latency_rows(r: dict[str, Any]) -> list[Row]:
    b, p, e = r["bare_forward"], r["predict"], r["explain"]
    return [
        ("bare forward, LiteRT, batch 1 (p50 / p95)", f"{b['p50_ms']:.2f} / {b['p95_ms']:.2f} ms", None),
        ("predict() from a JPEG (p50 / p95)", f"{p['p50_ms']:.2f} / {p['p95_ms']:.2f} ms", None),
        ("  predict() / bare forward", f"{p['vs_bare']:.2f}x", "predict.vs_bare"),
        ("predict(explain=True) (p50 / p95)", f"{e['p50_ms']:.2f} / {e['p95_ms']:.2f} ms", None),
        ("  predict(explain=True) / bare forward", f"{e['vs_bare']:.2f}x", None),
    ]


def neighbours_rows(n: dict[str, Any]) -> list[Row]:
    bank = f"{n['neighbours']} of {n['bank'][0]} photos, {n['bank'][1]}-d"
    return [
        (f"reference photos of the top species ({bank}), p50 / p95", _us(n["of_species"]), None),
        ("reference photos of any species, p50 / p95", _us(n["of_any"]), None),
        ("  reference photos, worst p95", f"{n['worst_p95_ms']:.3f} ms", "neighbours.worst_p95_ms"),
    ]


def _us(figures: dict[str, float]) -> str:
    return f"{figures['p50_us']:.0f} / {figures['p95_us']:.0f} us"


def keras_rows(k: dict[str, Any]) -> list[Row]:
    return [
        ("bare forward, Keras, batch 1 (p50 / p95)", f"{k['p50_ms']:.2f} / {k['p95_ms']:.2f} ms", None),
        ("  Keras / LiteRT (same run)", f"{k['vs_litert']:.2f}x", None),
    ]


def cli_rows(c: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, what in (("plain", "python -m flower_demo.predict photo.jpg"), ("explain", "  with --explain")):
        f = c[name]
        spread = f"(min {f['wall_min_s']:.2f}, max {f['wall_max_s']:.2f})"
        rows.append(
            (f"{what}: wall, median of {c['runs']}", f"{f['wall_s']:.2f} s {spread}", f"cli.{name}.wall_s")
        )
        indent = "  " if name == "explain" else ""
        rows.append((f"{indent}  peak RSS", f"{f['peak_rss_mib']:.0f} MiB", f"cli.{name}.peak_rss_mib"))
    rows.append(
        ("  TensorFlow imported", "yes" if c["tensorflow_imported"] else "no", "cli.tensorflow_imported")
    )
    return rows


def app_rows(a: dict[str, Any]) -> list[Row]:
    return [
        (
            "app: start to first /predict answer",
            f"{a['first_answer_s']:.2f} s (port open {a['listening_s']:.2f} s)",
            "app.first_answer_s",
        ),
        ("  RSS at the first answer", f"{a['first_answer_rss_mib']:.0f} MiB", None),
        (f"  /predict round trip (p50 of {a['requests']})", f"{a['request_p50_ms']:.1f} ms", None),
        (f"  RSS after {a['requests']} requests (process tree)", f"{a['rss_mib']:.0f} MiB", "app.rss_mib"),
        ("  TensorFlow loaded in the app", "yes" if a["tensorflow_loaded"] else "no", None),
    ]


def eval_rows(v: dict[str, Any]) -> list[Row]:
    return [
        (
            f"eval throughput, {v['images']} JPEGs, decoding included",
            f"{v['images_per_s']:.0f} images/s",
            "eval.images_per_s",
        ),
        (
            f"  decoding alone ({v['decode_threads']} threads)",
            f"{v['decode_only_images_per_s']:.0f} images/s",
            None,
        ),
        (
            f"  engine alone, pre-decoded ({v['engine_threads']} threads)",
            f"{v['engine_only_images_per_s']:.0f} images/s",
            None,
        ),
    ]


def agreement_rows(g: dict[str, Any]) -> list[Row]:
    return [
        (
            f"LiteRT/Keras same top-1, {g['n']} validation photos",
            f"{g['top1_agreement']:.2%}",
            "agreement.top1_agreement",
        ),
        (
            "  validation top-1, LiteRT / Keras",
            f"{g['tflite_top1']:.2%} / {g['keras_top1']:.2%}"
            if "tflite_top1" in g
            else "not scored: the model names other classes than the data",
            None,
        ),
    ]


def cam_rows(c: dict[str, Any]) -> list[Row]:
    return [
        (
            f"CAM vs Grad-CAM, Pearson r, min of {c['photos']} photos",
            f"{c['min_pearson']:.4f}",
            "cam.min_pearson",
        )
    ]


def training_rows(t: dict[str, Any]) -> list[Row]:
    n_img = f"{t['images']} images, {t['image_size']} px"
    return [
        ("train: cache activations (bottom)", f"{t['cache_ms_per_image_view']:.1f} ms per image-view", None),
        (f"train: stage 1 epoch ({n_img})", f"{t['stage1_s_per_epoch']:.3f} s", None),
        (f"train: stage 2 epoch ({n_img}, from {t['cut']})", f"{t['stage2_s_per_epoch']:.3f} s", None),
    ]


# The sections after the latencies, in table order: results key, what a skipped one is called, rows.
SECTIONS: tuple[tuple[str, str, Callable[[dict[str, Any]], list[Row]]], ...] = (
    ("neighbours", "reference photos", neighbours_rows),
    ("keras_forward", "bare forward, Keras", keras_rows),
    ("cli", "predict command line", cli_rows),
    ("app", "app", app_rows),
    ("eval", "eval throughput", eval_rows),
    ("agreement", "LiteRT/Keras agreement", agreement_rows),
    ("cam", "CAM vs Grad-CAM", cam_rows),
    ("training", "training", training_rows),
)


def skipped_row(part: dict[str, Any], what: str) -> Row | None:
    """The one row of a section that was skipped or failed (its reason), or None if it was measured."""
    for outcome in ("skipped", "error"):
        if outcome in part:
            return (what, f"{outcome}: {next(iter(part.values()))}", None)
    return None


def table_rows(r: dict[str, Any]) -> list[Row]:
    """(measurement, value, target key or None) for every figure measured."""
    rows = latency_rows(r)
    for key, what, section_rows in SECTIONS:
        skipped = skipped_row(r.get(key, {}), what)
        rows += [skipped] if skipped else section_rows(r[key])
    return rows


# --- the table -------------------------------------------------------------------------------


def header_lines(results: dict[str, Any]) -> list[str]:
    """The machine, its load and the model, above the table."""
    m, info, load = results["machine"], results["model"], results["load_average"]
    busy = "  (BUSY MACHINE: figures are noisy)" if load["busy"] else ""
    return [
        f"machine: {m['cpu_count']} CPUs ({m['cpu_model']}); Python {m['python']}, ai-edge-litert "
        f"{m['ai-edge-litert']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}",
        f"load average (1, 5, 15 min) before / after: {load['before']} / {load['after']}{busy}",
        f"model: {info['path']} ({info['backbone']}, {info['image_size']} px, {info['classes']} classes; "
        f"model.tflite {info['tflite_mb']} MB, model.keras {info['keras_mb']} MB)",
        "",
    ]


def format_table(results: dict[str, Any]) -> str:
    """The header, then one aligned line per row with its target and pass / MISS / - status."""
    checks = {c["key"]: c for c in results["targets"]}
    rows = [("measurement", "value", "target", "status")]
    for name, value, key in table_rows(results):
        check = checks.get(key or "")
        status = "" if check is None else STATUS[check["pass"]]
        rows.append((name, value, check["target"] if check else "", status))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(header_lines(results) + lines)
