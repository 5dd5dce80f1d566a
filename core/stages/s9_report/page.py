"""The report's one HTML page: inline CSS and a few lines of inline JS, images referenced by
relative paths inside the report folder, so it opens from disk with no server and no network."""
from __future__ import annotations

import math
from html import escape

from synfiqa.stages.s9_report.checks import MIN_FALL, MIN_SAMPLES, MIN_SOURCE_SIDE

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px;color:#222}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:15px;margin:16px 0 4px} .muted{color:#666} code{background:#f3f3f3;padding:0 3px}
.alert{border-left:5px solid #c0392b;background:#fdf0ee;padding:8px 12px;margin:10px 0}
.ok{border-left:5px solid #27ae60;background:#eefaf2;padding:8px 12px;margin:10px 0}
table{border-collapse:collapse;margin:6px 0} td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:middle}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{background:#fdf0ee} .strip{display:flex;flex-wrap:wrap;gap:2px;align-items:flex-end}
.strip figure{margin:0;text-align:center;font-size:10px;color:#555} .strip img{width:64px;height:64px;display:block}
.refs img{width:96px;height:96px} img.bad{outline:3px solid #c0392b} img.thumb{max-height:96px}
.identity{border:1px solid #e5e5e5;border-radius:4px;padding:6px 10px;margin:10px 0}
.identity.flag{border-color:#c0392b} #viewer{position:fixed;right:12px;bottom:12px;background:#fff;border:1px solid #999;
padding:6px;display:none;max-width:260px;font-size:12px;box-shadow:0 2px 8px #0003} #viewer img{width:224px;height:224px}
"""
# a click on a sample shows it at twice the size with its recorded values (the title, also the hover text)
SCRIPT = r"""
document.querySelectorAll('img.sample,img.reference').forEach(function(img){
  img.addEventListener('click',function(){var v=document.getElementById('viewer');
    v.querySelector('img').src=img.src;v.querySelector('pre').textContent=img.title;v.style.display='block';});});
document.getElementById('viewer').addEventListener('click',function(){this.style.display='none';});
(function(){var root=document.body.getAttribute('data-root').replace(/\/?$/,'/');
  var name=decodeURIComponent(new URL(root,location.href).pathname.split('/').filter(Boolean).pop()||'');
  if(name){document.title+=': '+name;document.getElementById('build-name').textContent=': '+name;}})();
window.addEventListener('load',function(){var broken=0,shown=0;   // what a browser test reads back
  Array.prototype.forEach.call(document.images,function(i){if(!i.getAttribute('src'))return;
    if(i.complete&&i.naturalWidth>0)shown++;else broken++;});
  document.body.setAttribute('data-images-shown',shown);document.body.setAttribute('data-images-broken',broken);});
"""


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def render(context: dict) -> str:
    """The page of a report; `context` is what make_report gathered (see __init__.py)."""
    # the page holds no name or absolute path of the build (its bytes do not depend on where the
    # build lies); the script names the build from the page's own location
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>synfiqa report</title>"
             f"<style>{CSS}</style></head><body data-root='{escape(context['root'])}'>"]
    parts.append("<h1>synfiqa report<span id='build-name'></span></h1>")
    parts.append(f"<p class='muted'>The build in <code>{escape(context['root'])}</code> (relative to this page): "
                 f"{context['identities']} identities, "
                 f"{context['references']} references, {context['degraded']} degraded samples; label "
                 f"<code>{escape(context['label_name'])}</code>{escape(context['partial'])}.</p>")
    parts += _flagged(context)
    parts += _histograms(context)
    parts += _agreement_table(context)
    parts += _filters(context)
    parts += _identities(context)
    parts += _evaluation(context)
    parts.append("<div id='viewer'><img alt=''><pre></pre></div>")
    parts.append(f"<script>{SCRIPT}</script></body></html>\n")
    return "\n".join(parts)


def _flagged(context: dict) -> list[str]:
    findings = context["findings"]
    out = ["<section id='flagged'><h2>Flagged</h2>"]
    flagged = findings.flagged
    if flagged:
        verb = "has" if len(flagged) == 1 else "have"
        out.append(f"<div class='alert'><b>{len(flagged)} of {len(findings.agreements)} identities {verb} labels that "
                   "do not fall as the recorded severity rises</b> (Spearman &rho;(score, severity) &gt; &minus;"
                   f"max({MIN_FALL}, critical value); see <a href='#agreement'>the table</a>):<ul>")
        for identity in flagged:
            agreement = findings.agreements[identity]
            notes = findings.small_sample_sources.get(identity, []) + [
                f"reference {r.path}: {p}" for r in findings.references.get(identity, []) for p in r.problems]
            out.append(f"<li class='flagged-identity' data-identity='{escape(identity)}'><a href='#id-{_anchor(identity)}'>"
                       f"{escape(identity)}</a>: &rho; = {fmt(agreement.rho)} over {agreement.samples} samples "
                       f"(needs &le; &minus;{fmt(agreement.threshold)})"
                       + (f"; {escape('; '.join(notes))}" if notes else "") + "</li>")
        out.append("</ul></div>")
    elif findings.agreements:
        out.append(f"<div class='ok'>Every identity's labels fall as the recorded severity rises "
                   f"({len(findings.agreements)} checked).</div>")
    unmeasured = [i for i, a in findings.agreements.items() if not a.measured]
    if unmeasured:
        out.append(f"<p class='muted'>Not measured (fewer than {MIN_SAMPLES} samples with a score, or a constant "
                   f"score or severity): {escape(', '.join(unmeasured))}.</p>")
    bad_references = findings.flagged_references
    if bad_references:
        out.append(f"<div class='alert'><b>{len(bad_references)} references are themselves of low quality</b>:<ul>")
        out += [f"<li class='flagged-reference' data-path='{escape(r.path)}'>{escape(r.path)} (from "
                f"{escape(str(r.source))}): {escape('; '.join(r.problems))}</li>" for r in bad_references]
        out.append("</ul></div>")
    else:
        out.append("<p class='muted'>No reference flagged (source photo shorter side &ge; "
                   f"{MIN_SOURCE_SIDE} px; cosine to the identity's other references above the embedder's "
                   "same-identity threshold where there are others).</p>")
    if findings.embedder_note:
        out.append(f"<p class='muted'>{escape(findings.embedder_note)}</p>")
    out.append("</section>")
    return out


def _histograms(context: dict) -> list[str]:
    if not context["degraded"]:
        return ["<section id='histograms'><h2>Scores</h2><p class='muted'>The build holds no degraded sample.</p>"
                "</section>"]
    return ["<section id='histograms'><h2>Scores</h2>",
            f"<img src='{context['histogram']}' alt='histograms of the label and of fr, sd, vl' style='max-width:100%'>",
            "</section>"]


def _agreement_table(context: dict) -> list[str]:
    findings = context["findings"]
    axes = findings.axes
    if not findings.agreements:
        return []
    out = ["<section id='agreement'><h2>Labels against recorded severity</h2>",
           "<p class='muted'>Recorded severity: for each degradation axis (" + escape(", ".join(axes) or "none")
           + ") the sample's rank among all samples, divided by their count, averaged over the axes (1 = the "
           "hardest degraded on every axis). &rho; &lt; 0: the score falls as severity rises, as it should.</p>",
           "<table><tr><th>identity</th><th>samples</th><th>&rho;(score, severity)</th><th>flagged when &rho; &gt;</th>"
           + "".join(f"<th>&rho;(score, {escape(a)})</th>" for a in axes) + "</tr>"]
    order = sorted(findings.agreements.values(), key=lambda a: (not a.flagged, -(a.rho if a.measured else -2)))
    for a in order:
        cells = "".join(f"<td class='num'>{fmt(a.per_axis.get(axis))}</td>" for axis in axes)
        out.append(f"<tr class='{'bad' if a.flagged else ''}' data-identity='{escape(a.identity)}'>"
                   f"<td><a href='#id-{_anchor(a.identity)}'>{escape(a.identity)}</a></td><td class='num'>{a.samples}"
                   f"</td><td class='num rho'>{fmt(a.rho)}</td><td class='num'>&minus;{fmt(a.threshold)}</td>{cells}</tr>")
    out.append("</table></section>")
    return out


def _filters(context: dict) -> list[str]:
    decisions = context["filters"]
    out = ["<section id='filters'><h2>Filter decisions</h2>"]
    if not decisions or not decisions.get("chain"):
        out.append("<p class='muted'>No filter ran (filter.chain is empty).</p></section>")
        return out
    chain = decisions["chain"]
    verdicts = decisions.get("verdicts", [])
    kept = sum(1 for v in verdicts if v.get("kept"))
    out.append(f"<p>Chain {' &rarr; '.join(escape(name) for name in chain)}: kept {kept} of {len(verdicts)} identities. Each "
               "identity is judged on its first photo with a face; the values are what each filter measured.</p>")
    out.append("<table><tr><th>photo</th><th>identity</th><th>decision</th><th>reason</th>"
               + "".join(f"<th>{escape(name)}</th>" for name in chain) + "</tr>")
    for verdict in verdicts:
        identity = verdict.get("identity", "")
        thumb = context["filter_thumbs"].get(identity)
        image = (f"<img class='thumb' src='{escape(thumb)}' alt='{escape(identity)}'>" if thumb
                 else "<span class='muted'>photo not found</span>")
        decision = "kept" if verdict.get("kept") else f"removed by {escape(str(verdict.get('removed_by')))}"
        values = verdict.get("values", {})
        cells = "".join(f"<td class='num'>{_significant(values.get(name))}</td>" for name in chain)
        out.append(f"<tr class='filter-decision {'' if verdict.get('kept') else 'bad'}' data-identity='{escape(identity)}'"
                   f" data-kept='{str(bool(verdict.get('kept'))).lower()}'><td>{image}</td><td>{escape(identity)}</td>"
                   f"<td>{decision}</td><td>{escape(str(verdict.get('reason') or ''))}</td>{cells}</tr>")
    out.append("</table></section>")
    return out


def _identities(context: dict) -> list[str]:
    findings = context["findings"]
    shown = context["galleries"]
    out = ["<section id='identities'><h2>Identities</h2>",
           "<p class='muted'>References, then the degraded samples sorted by score, highest first; hover (or click) "
           "a sample for its score, domains and recorded intensities.</p>"]
    if len(shown) < len(context["all_identities"]):
        out.append(f"<p class='muted'>Showing {len(shown)} of {len(context['all_identities'])} identities (flagged "
                   "first); <code>--galleries N</code> shows more.</p>")
    for identity in shown:
        agreement = findings.agreements.get(identity)
        flag = agreement is not None and agreement.flagged
        out.append(f"<div class='identity{' flag' if flag else ''}' id='id-{_anchor(identity)}' "
                   f"data-identity='{escape(identity)}'><h3>{escape(identity)}"
                   + (f" <span class='muted'>&rho; = {fmt(agreement.rho)}</span>" if agreement else "")
                   + (" &mdash; flagged" if flag else "") + "</h3>")
        out.append("<div class='strip refs'>")
        for reference in context["reference_cards"].get(identity, []):
            out.append(f"<figure><img class='reference{' bad' if reference['problems'] else ''}' "
                       f"src='{escape(reference['src'])}' title='{escape(reference['title'])}' alt=''>"
                       f"<figcaption>{escape(reference['caption'])}</figcaption></figure>")
        out.append("</div><div class='strip samples' data-identity='" + escape(identity) + "'>")
        for card in context["sample_cards"].get(identity, []):
            out.append(f"<figure><img class='sample' src='{escape(card['src'])}' data-score='{card['score']!r}' "
                       f"title='{escape(card['title'])}' alt=''><figcaption>{fmt(card['score'], 2)}</figcaption></figure>")
        out.append("</div></div>")
    out.append("</section>")
    return out


def _evaluation(context: dict) -> list[str]:
    if not context.get("edc"):
        return ["<section id='edc'><h2>Evaluation</h2><p class='muted'>No evaluation given (<code>synfiqa report "
                "DATASET --evaluation FILE</code>, FILE from <code>synfiqa evaluate ... --json --curves</code>)."
                "</p></section>"]
    return ["<section id='edc'><h2>Evaluation: EDC</h2>",
            f"<p class='muted'>{escape(context['edc_caption'])}</p>",
            f"<img src='{context['edc']}' alt='EDC plot' style='max-width:100%'></section>"]


def _significant(value) -> str:
    """A measured filter value with 3 significant digits: a neutral probability of 0.0001 stays visible;
    a dash where the filter did not measure (it ran after the one that removed the identity)."""
    return "&mdash;" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.3g}"


def _anchor(identity: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else f"_{ord(c):x}" for c in identity)
