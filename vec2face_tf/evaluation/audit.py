"""``vec2face-audit``: one self-contained HTML report of how much identity a model leaks.

``audit(model, data, out_dir)`` runs the evaluation protocol (``suite.evaluate``: the same
figures as ``vec2face-eval``, one code path) with refinement budgets and a transfer matrix,
then writes ``report.html``: the setup, the thresholds and how they were derived, SAR against
FMR (type I and II, the real photos' genuine rate beside them), SAR against engine queries, the
transfer matrix, grids of real | feed-forward | refined faces, and what the figures do and do
not show. Every picture is embedded (``data:`` URIs), so the file reads without the package,
the network or the evaluation folder.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import pathlib

from vec2face_tf.evaluation import suite

# Budgets that draw SAR against queries; no early stop, so every budget is a real point.
DEFAULT_QUERIES = "0,5,10,25"
DEFAULT_TARGET_ENGINES = "sface,dlib"
REPORT_FILE = "report.html"
_FMR_HEADLINE = "0.001"


class AuditError(ValueError):
    """An audit that cannot be written (bad flags); evaluation errors keep their own types."""


def audit(model: str | os.PathLike, data: str, out_dir: str | os.PathLike,
          target_engine: str | None = DEFAULT_TARGET_ENGINES,
          queries: str = DEFAULT_QUERIES, max_identities: int = 0,
          cache_dir: str | os.PathLike | None = None, workers: int = 2,
          detectors: tuple[str, ...] = ("dlib",), seed: int = 0, progress: bool = True,
          student: str | os.PathLike | None | bool = None) -> pathlib.Path:
    """Evaluates ``model`` on ``data`` and writes ``<out_dir>/report.html``.

    Args:
      model: an exported generator (version folder or model base).
      data: photos, ``<identity>/<image>`` (at least two photos for some identities), or
        templates of the model's engine, ``<identity>/<template>.npy|.json`` (then only the
        model's engine verifies: other engines need the photos, and the page says so).
      out_dir: the audit folder; the evaluation's own files go to ``<out_dir>/evaluation``.
      target_engine: engines that verify the reconstructions (the transfer matrix); the
        model's own engine is added when missing. None or "" for the model's engine alone.
      queries: refinement budgets, e.g. ``"0,5,10,25"``; "" or "0" for feed-forward only.
      max_identities: audit at most this many probe identities (0: all), for a quick look.
      cache_dir: the embedding cache (default ``<out_dir>/evaluation/cache``).
      workers: processes that align and embed.
      detectors: face detectors of the realism block.
      seed: the seed of the evaluation (baselines, bootstrap, refinement).
      progress: show progress bars.
      student: the refinement's guide (None: the model's student; False: none).

    Returns:
      The path of ``report.html``.

    Raises:
      AuditError, and the evaluation's errors (``suite.expected_errors()``).
    """
    from vec2face_tf.export import savedmodel

    if max_identities < 0:
        raise AuditError(f"max_identities={max_identities} must be >= 0")
    from vec2face_tf.data import inputs

    metadata = savedmodel.read_metadata(savedmodel.resolve_version_dir(model))
    verifiers = suite.parse_engine_list(target_engine)
    if inputs.is_template_folder(data):
        verifiers = []  # only the model's engine can score faces against its templates
    elif metadata["engine"] not in verifiers:
        verifiers.insert(0, metadata["engine"])
    out_path = pathlib.Path(out_dir)
    evaluation_dir = out_path / "evaluation"
    report = suite.evaluate(
        model, data, evaluation_dir, target_engine=",".join(verifiers), cache_dir=cache_dir,
        workers=workers, max_probe_identities=max_identities, detectors=detectors, seed=seed,
        progress=progress, queries=queries if queries.strip() not in ("", "0") else (),
        stop_at=None, student=student)
    page = render_html(report, evaluation_dir)
    path = out_path / REPORT_FILE
    temporary = path.with_suffix(".html.partial")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a report
    return path


def _image_uri(path: pathlib.Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure_uri(figure) -> str:
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def percent(rate: float) -> str:
    """The page's way of writing a rate: ``0.921`` -> ``"92.1 %"``."""
    return f"{100 * rate:.1f} %"


# A rate with its bootstrap interval, written as in report.md.
interval = suite.sar_text


def sar_fmr_figure(report: dict):
    """SAR against FMR (log axis): type I, type II, nearest neighbour, real photos' genuine."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    curve = report["sar_curve"]
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    styles = {"real_photos_type2": ("real photos, genuine pairs (the engine's TMR)", "tab:blue",
                                    "-"),
              "reconstruction_type1": ("reconstruction, type I", "tab:red", "-"),
              "reconstruction_type2": ("reconstruction, type II", "tab:orange", "-"),
              "nearest_neighbour_type1": ("nearest training face, type I", "tab:green", "--")}
    for key, (label, color, style) in styles.items():
        axis.plot(curve["fmr"], [100 * v for v in curve[key]], style, color=color, label=label,
                  marker="o", markersize=3)
    axis.set_xscale("log")
    axis.invert_xaxis()
    axis.set_xlabel("false-match rate (threshold from the real photos' impostor pairs)")
    axis.set_ylabel("success rate (%)")
    axis.set_ylim(-2, 102)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    return figure


def sar_queries_figure(report: dict):
    """SAR type I and II against the engine queries of refinement, one line per FMR."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = report["refinement"]["rows"]
    budgets = [int(budget) for budget in rows]
    figure, axes = plt.subplots(1, 2, figsize=(7.6, 3.3), sharey=True)
    for axis, kind, title in zip(axes, ("type1", "type2"), ("type I", "type II"), strict=True):
        for fmr in report["thresholds"]:
            axis.plot(budgets, [100 * rows[str(b)]["sar"][fmr][kind]["rate"] for b in budgets],
                      marker="o", label=f"FMR {fmr}")
        axis.set_title(f"SAR {title}", fontsize=9)
        axis.set_xlabel("engine queries per template")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("success rate (%)")
    axes[0].set_ylim(-2, 102)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    return figure


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def render_html(report: dict, evaluation_dir: str | os.PathLike) -> str:
    """The page of ``report`` (``suite.evaluate``'s), with the pictures of its folder inlined."""
    from vec2face_tf import __version__

    folder = pathlib.Path(evaluation_dir)
    fmrs = list(report["thresholds"])
    engine = report["engine"]
    attacks = report["attacks"]
    reconstruction = attacks["reconstruction"]
    headline = reconstruction["sar"].get(_FMR_HEADLINE) or reconstruction["sar"][fmrs[0]]
    headline_fmr = _FMR_HEADLINE if _FMR_HEADLINE in reconstruction["sar"] else fmrs[0]
    genuine = attacks["real_photos"]["sar"][headline_fmr]["type2"]
    parts = [f"<h1>Template inversion audit: {html.escape(engine)}</h1>",
             f"<p class=meta>Model <code>{html.escape(report['model'])}</code> · data "
             f"<code>{html.escape(report['data'])}</code> · vec2face_tf {__version__} · "
             f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC</p>",
             "<div class=headline>",
             f"<p>From a stored <b>{html.escape(engine)}</b> template alone, the generator draws "
             f"a face that the same engine accepts as the template's owner for "
             f"<b>{percent(headline['type1']['rate'])}</b> of the templates (type I, FMR "
             f"{headline_fmr}) and as the same person in another photo for "
             f"<b>{percent(headline['type2']['rate'])}</b> of those pairs (type II). The "
             f"engine's own genuine photo pairs pass at {percent(genuine['rate'])}.</p>",
             "</div>"]

    parts += ["<h2>Setup</h2>", _table(["item", "value"], [
        ["attacked engine (the model's)", engine],
        ["photos", report["data"]],
        ["probe identities (never seen in training)", f"{report['probe_identities']:,}"],
        ["probe photos (templates attacked)", f"{report['probes']:,}"],
        ["gallery (training identities, for the nearest-neighbour baseline)",
         f"{report['gallery']:,} photos of {report['gallery_identities']:,} identities"],
        ["photos that set the thresholds", f"{report['threshold_faces']:,}"],
        ["genuine pairs (ordered)", f"{report['genuine_pairs']:,}"],
        ["split", report["split"]],
        ["evaluation time", f"{report['seconds'] / 60:.1f} min"]])]

    threshold_rows = [[fmr, f"{entry['cosine']:.4f}", f"{entry['impostor_pairs']:,}",
                       f"{entry['false_matches']:,}"]
                      for fmr, entry in report["thresholds"].items()]
    parts += ["<h2>Thresholds</h2>",
              "<p>Every pair of photos of two different people in the data is an impostor "
              "pair. At a false-match rate f the threshold is the lowest cosine that at most "
              "f × n of the n impostor pairs exceed; a face matches when its cosine is above "
              "it. An FMR needs at least 10 / f impostor pairs (10 expected false matches), so "
              "small data sets stop at 1e-3. Each engine of the transfer matrix gets its own "
              "thresholds, the same way, from its own vectors of the same photos.</p>",
              _table(["FMR", "cosine threshold", "impostor pairs", "false matches"],
                     threshold_rows)]

    attack_rows = []
    for name, label in (("reconstruction", "reconstruction (feed-forward)"),
                        ("nearest_neighbour", "nearest training face"),
                        ("random_training_face", "random training face"),
                        ("real_photos", "real photos (genuine pairs)")):
        attack = attacks[name]
        row = [label, f"{attack['mean_cosine']:.3f}"]
        for fmr in fmrs:
            row += [interval(attack["sar"][fmr]["type1"]), interval(attack["sar"][fmr]["type2"])]
        attack_rows.append(row)
    header = ["attack", "mean cosine"] + [f"SAR {kind} @{fmr}" for fmr in fmrs
                                          for kind in ("I", "II")]
    parts += ["<h2>Success rate against the false-match rate</h2>",
              "<p>Type I: the face against the template it was made from. Type II: against "
              "the person's other photos. Intervals: 95 % bootstrap over whole identities. "
              "Real photos' type I is a photo against itself (always 100 %); their type II is "
              "the engine's own true-match rate, the ceiling of any type II attack.</p>",
              _img(_figure_uri(sar_fmr_figure(report)), "SAR against FMR"),
              _table(header, attack_rows)]

    if "refinement" in report:
        block = report["refinement"]
        query_rows = []
        for budget, row in block["rows"].items():
            cells = [budget, f"{row['mean_queries']:.1f}", f"{row['mean_cosine']:.3f}"]
            for fmr in fmrs:
                cells += [interval(row["sar"][fmr]["type1"]), interval(row["sar"][fmr]["type2"])]
            query_rows.append(cells)
        parts += ["<h2>Success rate against engine queries</h2>",
                  f"<p>{block['templates']} templates ({html.escape(block['template_choice'])})"
                  f", each refined with up to the given number of queries to the engine "
                  f"(score-only access, as an attacker with the engine's API has); guide: "
                  f"{html.escape(str(block['guide']))}; early stop: "
                  f"{html.escape(str(block['stop_at'] or 'none'))}.</p>",
                  _img(_figure_uri(sar_queries_figure(report)), "SAR against queries"),
                  _table(["queries", "mean queries spent", "mean cosine"] +
                         [f"SAR {kind} @{fmr}" for fmr in fmrs for kind in ("I", "II")],
                         query_rows)]

    templates_only = report.get("data_kind") == "templates"
    if "transfer" in report:
        parts += _transfer_section(report["transfer"])
    elif templates_only:
        parts += ["<h2>Transfer matrix</h2>",
                  "<p>Not measured: the data are templates of the attacked engine, and "
                  "another engine can only verify a face against its own vectors of the "
                  "person's photos. Audit a folder of photos for the transfer matrix.</p>"]

    parts += ["<h2>Faces</h2>",
              "<p>" + ("Reconstructions, with each face's cosine to its template (a template "
                       "folder has no photos to show beside them)." if templates_only else
                       "Real photo | reconstruction | nearest training face, with each face's "
                       f"{html.escape(engine)} cosine to the real photo's template.") + "</p>",
              _img(_image_uri(folder / "grid.png"), "faces")]
    if (folder / "refinement_grid.png").exists():
        parts += ["<p>" + ("" if templates_only else "Real photo | ") +
                  "feed-forward | refined.</p>",
                  _img(_image_uri(folder / "refinement_grid.png"),
                       "real | feed-forward | refined")]
    parts += ["<p>Score distributions of the same run.</p>",
              _img(_image_uri(folder / "scores.png"), "score distributions")]
    parts += [_LIMITS]
    parts.append('<script type="application/json" id="report-json">'
                 + html.escape(json.dumps(_figures_only(report)), quote=False) + "</script>")
    return _PAGE.format(title=html.escape(f"vec2face audit: {engine}"), style=_STYLE,
                        body="\n".join(parts), check=_IMAGE_CHECK)


def _transfer_section(transfer: dict) -> list[str]:
    engines = transfer["engines"]
    fmrs = suite.transfer_fmrs(transfer)
    header = ["attack"] + [f"{name} SAR {kind} @{fmr}" for name in engines for fmr in fmrs
                           for kind in ("I", "II")]
    rows = [[attack] + [interval(cells[name]["sar"][fmr][kind]) for name in engines
                        for fmr in fmrs for kind in ("type1", "type2")]
            for attack, cells in transfer["rows"].items()]
    thresholds = [[name, fmr, f"{transfer['thresholds'][name][fmr]['cosine']:.4f}",
                   f"{transfer['probes'][name]['probes_scored']:,}"]
                  for name in engines for fmr in fmrs]
    return ["<h2>Transfer matrix</h2>",
            f"<p>Rows: the attack on <b>{html.escape(transfer['attacked_engine'])}</b> "
            "templates. Columns: the engine that verifies the face, each at its own "
            "thresholds. A leaked template is a risk to every system that enrols the same "
            "person, not only to the one it came from.</p>",
            _table(header, rows),
            _table(["verifying engine", "FMR", "threshold", "probes scored"], thresholds)]


def _figures_only(report: dict) -> dict:
    """The report without its score samples (large, and only drawn)."""
    return {key: value for key, value in report.items() if key != "score_samples"}


_LIMITS = """<h2>What these figures show, and what they do not</h2>
<ul>
<li>They show how often a face drawn from a stored template alone passes verification at a
stated false-match rate, on people the generator never trained on. A type I success is a
template turned into a face that the system accepts for that template; type II, a face that
matches the person's other photos: a template leaked from one system used against another
enrolment.</li>
<li>They do not show that a person would recognise the face, that it would pass presentation-
attack detection (liveness) or a human check, or how the attack does on another population,
camera or pose: the rates hold for these photos and these engines. Intervals come from
resampling identities; with few identities they are wide.</li>
<li>A generator trained against another engine than yours, or on other data, may do better or
worse; the attacker's best model is at least as good as the one measured here.</li>
</ul>
<h2>Defences</h2>
<ul>
<li><b>Limit and watch queries.</b> Refinement needs score-only access to the engine; a rate
limit per client and alerting on many near-threshold attempts for one identity bound the
queries an attacker gets (the queries curve above says how many are enough).</li>
<li><b>Do not expose scores.</b> Return accept/reject only; a decision leaks far less per query
than a cosine.</li>
<li><b>Protect templates.</b> Store cancellable or encrypted templates (a secret per-system
transform, homomorphic matching, or a biometric cryptosystem) so that a leaked file is not a
usable feature vector, and so that it can be revoked.</li>
<li><b>Treat templates as biometric data.</b> Access control, encryption at rest and audit
logs, as for the photos they were made from.</li>
</ul>"""

_STYLE = """body{font-family:DejaVu Sans,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#222;line-height:1.45}h1{font-size:24px}h2{font-size:18px;margin-top:28px;
border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:10px 0;font-size:12px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f3f3f3}
img{max-width:100%;display:block;margin:8px 0}.meta{color:#666;font-size:12px}
.headline{background:#fff4e5;border-left:4px solid #e69500;padding:4px 14px}
code{font-size:12px}"""

# Marks the page once every picture has decoded, so a headless browser can say so.
_IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (im) { return !im.complete || im.naturalWidth === 0; });
  document.body.setAttribute("data-images", String(images.length));
  document.body.setAttribute("data-broken-images", String(broken.length));
});
</script>"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
{body}
{check}
</body></html>
"""
