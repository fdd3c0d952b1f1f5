"""model_card.md: what a version is, what it was trained on, how it did and what the gates said."""

from __future__ import annotations

from dataclasses import dataclass

from gates.profile import Profile
from gates.report import GateReport


@dataclass(frozen=True)
class CardFacts:
    """What the card says beyond the gate report: from the run and params."""

    model_type: str
    hyperparameters: dict[str, str]
    data_path: str
    data_rows: str
    data_fingerprint: str
    target: str
    positive_label: str
    artifact_digest: str
    intended_use: str
    limitations: str
    profile: Profile | None


def model_card(report: GateReport, facts: CardFacts) -> str:
    """The card as Markdown; deterministic like the report it is built from."""
    r = report.result
    lines = [
        f"# Model card: `{report.model_name}` from run `{report.run_id}`",
        "",
        f"**Gate: {report.verdict}** at commit `{report.git_sha[:12]}`"
        + (f", compared with production v{r.baseline.version}." if r.baseline else ", first version (no production)."),
        "",
        "## Intended use",
        "",
        facts.intended_use,
        "",
        "## Limitations",
        "",
        facts.limitations,
        "",
        "## Model",
        "",
        f"- type: `{facts.model_type}`",
        *[f"- {k}: `{v}`" for k, v in sorted(facts.hyperparameters.items())],
        f"- artifact digest: `{facts.artifact_digest}`",
        "",
        "## Training data",
        "",
        f"- file: `{facts.data_path}`, {facts.data_rows} rows, sha256 `{facts.data_fingerprint}`",
        f"- target: `{facts.target}`, positive class `{facts.positive_label}`",
        *_profile_lines(facts.profile),
        "",
        "## Metrics on the held-out test rows",
        "",
    ]
    level = f"{report.confidence:.0%} CI" if report.confidence is not None else "CI"
    lines += [f"| metric | value | {level} |", "|---|---|---|"]
    for name, c in r.comparisons.items():
        ci = "—" if c.candidate_ci is None else f"[{c.candidate_ci[0]:.4f}, {c.candidate_ci[1]:.4f}]"
        lines.append(f"| {name} | {c.candidate:.4f} | {ci} |")
    if r.slices:
        lines += ["", "## Slices (F1)", "", "| slice | rows | F1 |", "|---|---|---|"]
        lines += [f"| {s.label} | {s.rows} | {s.candidate:.4f} |" for s in r.slices]
    lines += ["", "## Serving input schema", ""]
    if r.schema is not None and r.schema.breaking:
        lines.append(f"Breaks clients of production: {'; '.join(r.schema.breaking)}.")
    elif r.schema is not None:
        lines.append("Compatible with production's.")
    else:
        lines.append("No production schema to compare with.")
    lines += ["", "## Gate verdicts", "", "| rule | verdict | detail |", "|---|---|---|"]
    lines += [
        f"| `{rule.rule}` | {'pass' if rule.passed else 'FAIL'} | {rule.detail.replace('|', '/')} |" for rule in r.rules
    ]
    if report.policy_changes:
        lines += ["", "## Gate policy changes in this change", ""]
        lines += [f"- {c.direction}: {c.message}" for c in report.policy_changes]
    return "\n".join(lines) + "\n"


def _profile_lines(profile: Profile | None) -> list[str]:
    if not profile:
        return ["- profile: not recorded"]
    out = [f"- {len(profile['columns'])} feature columns, {profile['rows']} training rows:"]
    for name, column in profile["columns"].items():
        missing = f", {column['missing_share']:.1%} missing" if column["missing_share"] else ""
        if column["kind"] == "numeric" and column.get("percentiles"):
            p = column["percentiles"]
            out.append(f"  - `{name}` numeric: median {p[50]:g}, 5–95 % {p[5]:g}–{p[95]:g}{missing}")
        else:
            top = list(column.get("categories", {}).items())[:4]
            shown = ", ".join(f"{k} {v:.0%}" for k, v in top)
            out.append(f"  - `{name}` categorical: {shown}{missing}")
    return out
