"""Is tuning worth it here? The seed's decision aids, from what is known.

The seed's decision tree (baseline F1 > 0.95: don't tune; under 10K images: fix the data
first; else by time: > 5 h precise, 2-5 h balanced, < 2 h quick), its competition-stage
table (last day: no tuning), its failure cases (an already tuned model; heavy
regularization already on) and its pre-flight checklist, turned into one verdict with
the reasons that decided it. Whatever is unknown is said, with the assumption made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunewise import units

LEVELS = ("skip", "quick", "balanced", "precise")
TRIALS = {"skip": "0", "quick": "20", "balanced": "50", "precise": "100+"}
# The seed's measured mean gain from tuning, by dataset size.
SIZE_GAIN = [(10_000, "10K+ images", "+5.2%"), (5_000, "5-10K images", "+2.1%"),
             (1_000, "1-5K images", "+0.3%"), (0, "under 1K images", "-0.8%")]
# The seed's gain by time invested.
TIME_GAIN = [(10, "+4-5% (diminishing)"), (5, "+3-4%"), (1, "+1-2%"), (0, "under +1-2%")]
ROI_TEXT = {"high": "high (the seed's ROI > 300%)", "medium": "medium (ROI 100-300%)", "low": "low (ROI < 100%)"}


@dataclass
class Situation:
    """What is known before (or after) a study; None where unknown."""

    n_images: int | None = None
    n_classes: int | None = None
    baseline: float | None = None  # macro-F1 of the default settings
    noise: float | None = None  # seed-to-seed std of the score (from validation)
    hours: float | None = None  # compute time available for tuning
    days_left: float | None = None  # days left in the competition
    tuned_before: bool | None = None  # this model was tuned already
    heavy_regularization: bool | None = None  # label smoothing, wd, dropout, mixup all high already
    experienced: bool | None = None  # much manual tuning done on this problem already


@dataclass
class Advice:
    verdict: str  # skip | quick | balanced | precise
    n_trials: str
    expected_gain: str
    expected_roi: str
    reasons: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    checklist: dict[str, str] = field(default_factory=dict)  # item -> high | medium | low
    situation: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        head = ("Don't tune" if self.verdict == "skip" else f"Tune: {self.verdict} search ({self.n_trials} trials)")
        parts = [f"{head}. Expected gain {self.expected_gain}; expected ROI {self.expected_roi}."]
        parts += [f"Because {r}" for r in self.reasons]
        if self.assumptions:
            parts.append("Assumed: " + "; ".join(self.assumptions) + ".")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cap(current: str, cap: str) -> str:
    return LEVELS[min(LEVELS.index(current), LEVELS.index(cap))]


def _size_band(n: int) -> tuple[str, str]:
    return next((band, gain) for low, band, gain in SIZE_GAIN if n >= low)


def checklist(s: Situation) -> dict[str, str]:
    """The seed's pre-flight checklist, item by item (unknown items left out)."""
    items: dict[str, str] = {}
    if s.tuned_before is not None:
        items["model"] = "low" if s.tuned_before else "high"
    if s.baseline is not None:
        items["baseline"] = "high" if s.baseline < 0.85 else "medium" if s.baseline <= 0.93 else "low"
    if s.n_images is not None:
        items["dataset size"] = "high" if s.n_images > 10_000 else "medium" if s.n_images >= 5_000 else "low"
    if s.experienced is not None:
        items["tuning done so far"] = "low" if s.experienced else "high"
    if s.hours is not None:
        items["compute time"] = "high" if s.hours >= 5 else "medium" if s.hours >= 2 else "low"
    return items


def _overall(items: dict[str, str]) -> str:
    if not items:
        return "medium"
    score = sum({"high": 2, "medium": 1, "low": 0}[v] for v in items.values()) / len(items)
    return "high" if score >= 1.5 else "medium" if score >= 0.75 else "low"


def advise(s: Situation) -> Advice:
    reasons: list[str] = []
    assumptions: list[str] = []

    # The decision tree, top to bottom.
    if s.baseline is not None and s.baseline > 0.95:
        verdict = "skip"
        reasons.append(f"the baseline macro-F1 {s.baseline:.4f} is above 0.95: little room left; look at data, ensembles or TTA instead.")
    elif s.n_images is not None and s.n_images < 10_000:
        band, gain = _size_band(s.n_images)
        verdict = "skip"
        reasons.append(f"{s.n_images} images is under 10K: the seed measured {gain} on average from tuning at {band}; improving the data pays more.")
    else:
        if s.n_images is None:
            assumptions.append("dataset size unknown, treated as 10K+")
        hours = s.hours
        if hours is None:
            hours = 3.0
            assumptions.append("time available unknown, treated as 2-5 h")
        verdict = "precise" if hours > 5 else "balanced" if hours >= 2 else "quick"
        reasons.append(f"with {units.hours(hours)} available the seed's tree says a {verdict} search ({TRIALS[verdict]} trials).")

    # What caps it.
    if s.days_left is not None:
        if s.days_left < 1:
            verdict = "skip"
            reasons.append("it is the competition's last day: no new experiments; ensemble, TTA and data cleaning are surer.")
        elif s.days_left <= 3:
            if verdict != _cap(verdict, "quick"):
                reasons.append(f"{s.days_left:g} days left: the seed allows a quick search only (20-30 trials).")
            verdict = _cap(verdict, "quick")
        elif s.days_left <= 14:
            if verdict != _cap(verdict, "balanced"):
                reasons.append(f"{s.days_left:g} days left: a balanced search (50-100 trials) at most.")
            verdict = _cap(verdict, "balanced")
    if s.tuned_before:
        verdict = "skip"
        reasons.append("the model is already tuned: the seed's case went 0.9234 -> 0.9241 in 50-100 trials.")
    if s.heavy_regularization and verdict != "skip":
        verdict = LEVELS[LEVELS.index(verdict) - 1]
        reasons.append("heavy regularization is already on (smoothing, weight decay, dropout, mixup): tuning does little; one step smaller.")

    # What can be measured at all.
    if s.n_images is not None and s.n_images >= 10_000 and s.baseline and s.noise is not None and verdict != "skip":
        expected = 0.052 * s.baseline
        if expected < s.noise:
            verdict = LEVELS[LEVELS.index(verdict) - 1]
            reasons.append(f"the expected gain (~{expected:.4f}) is below the measured seed-to-seed noise {s.noise:.4f}: it would not be measurable; one step smaller.")

    gain = _expected_gain(s, verdict)
    items = checklist(s)
    return Advice(verdict, TRIALS[verdict], gain, ROI_TEXT[_overall(items)] if verdict != "skip" else "none (no tuning)",
                  reasons, assumptions, items, asdict(s))


def _expected_gain(s: Situation, verdict: str) -> str:
    if verdict == "skip":
        return "none worth the time"
    parts = []
    if s.n_images is not None:
        band, gain = _size_band(s.n_images)
        parts.append(f"{gain} (mean at {band})")
    if s.hours is not None:
        parts.append(next(g for low, g in TIME_GAIN if s.hours >= low) + f" for {units.hours(s.hours)}")
    return ", ".join(parts) or "+1-5% (the seed's range)"
