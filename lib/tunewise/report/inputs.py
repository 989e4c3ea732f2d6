"""What a run actually used, shown once near the top of every report and kept in its summary.

A shared report is read by someone who was not at the keyboard, and the notebook's committed
parameters cell holds its defaults, not the run's values. `render(p)` is one table of the
effective values in the params file's names (data with its image and class counts and
fingerprint, training, study, the phase's own settings, and the studies a later phase built
on); a value that differs from the notebook's committed default is marked, with that default
next to it. `summary_inputs(p)` is the same, for summary.json. The storage is always shown
redacted (``study.storage.label``).
"""

from __future__ import annotations

import ast
import html
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from tunewise import config as C
from tunewise.study.storage import label

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"

STUDY_KEYS = ["study_name", "storage", "run_dir", "n_trials", "timeout", "sampler", "pruner", "stop_rules",
              "search_space", "baseline", "objectives", "warm_start_from", "workers", "gpus", "device",
              "val_fraction", "split_seed", "force", "cache_dir", "tracking"]
# Which groups each phase uses, and its own settings (the rest of the parameters it ignores).
PHASE_GROUPS: dict[str, tuple[Sequence[str], Sequence[str], Sequence[str]]] = {
    # phase: (groups, study keys it reads, its own keys)
    "quick": (("data", "training", "study"), STUDY_KEYS, ()),
    "focused": (("data", "training", "study"), STUDY_KEYS,
                ("source_study", "focus_mode", "min_relative_gain", "always_run", "top_share", "top_k", "margin", "warm_start_n")),
    "validate": (("data", "training", "study"), ["storage", "run_dir", "device", "val_fraction", "cache_dir", "tracking"],
                 ("source_study", "seeds", "top_k", "folds", "params_out")),
    "postmortem": (("study",), ["storage", "run_dir"], ("studies", "max_latency_ms", "max_params")),
}


@lru_cache(maxsize=None)
def committed_defaults(phase: str) -> dict[str, Any]:
    """The values in the phase notebook's committed parameters cell (literals), over the
    parameters' defaults for the names the cell does not set."""
    values = dict(C.DEFAULTS)
    path = NOTEBOOKS / C.NOTEBOOK_FILES.get(phase, f"{phase}.ipynb")
    if not path.is_file():
        return values
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            for node in ast.parse(source).body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                    try:
                        values[node.target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
    return values


def _same(a: Any, b: Any) -> bool:
    def norm(v):
        return None if v in ("", None) else json.dumps(v, sort_keys=True, default=str)

    return norm(a) == norm(b)


def _shown(p: dict[str, Any], key: str) -> Any:
    return label(p["storage"], p["run_dir"]) if key == "storage" else p[key]


def groups(p: dict[str, Any]) -> dict[str, list[str]]:
    """Group name -> the parameter names this phase reads, in the params file's names."""
    used, study_keys, own = PHASE_GROUPS.get(p["phase"], PHASE_GROUPS["quick"])
    synthetic = p["dataset"] == "synthetic"
    csv = str(p["dataset"]).lower().endswith(".csv")
    data = [k for k in C.DATA_KEYS if (synthetic or not k.startswith("synthetic_"))
            and (csv or k not in ("id_column", "target_column"))]
    out = {"data": data, "training": list(C.TRAIN_KEYS), "study": list(study_keys)}
    out = {g: keys for g, keys in out.items() if g in used}
    if own:
        out[p["phase"]] = list(own)
    return out


def data_facts(p: dict[str, Any]) -> dict[str, Any]:
    """Image and class counts and the fingerprint of the data the run read (the cache
    answers: nothing is decoded twice); {} for the post-mortem, which reads studies."""
    if "data" not in groups(p):
        return {}
    from tunewise.data.cache import describe
    from tunewise.phases.tuning import load_images

    info = describe(load_images(C.data_spec(p), p["cache_dir"]))
    return {"n_images": info["n_images"], "n_classes": info["classes"], "fingerprint": info["fingerprint"],
            "decoded_img_size": info["img_size"], "description": info["description"]}


def built_on(studies: Sequence[Any]) -> list[dict[str, Any]]:
    """For each study a later phase read: its size, best value and the data it ran on."""
    from optuna.trial import TrialState

    rows = []
    for s in studies:
        recorded = s.user_attrs.get("tunewise.params") or {}
        identity = s.user_attrs.get("tunewise.identity") or {}
        complete = [t for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        best = None
        if complete and len(s.directions) == 1:
            best = s.best_value
        rows.append({"study": s.study_name, "finished trials": len(complete), "best": best,
                     "dataset": recorded.get("dataset"), "img_size": recorded.get("img_size"),
                     "epochs": recorded.get("epochs"), "fingerprint": identity.get("data_fingerprint")})
    return rows


def summary_inputs(p: dict[str, Any], facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The effective parameters of a phase, grouped, storage redacted; the names that
    differ from the notebook's committed defaults; the data's counts and fingerprint."""
    facts = data_facts(p) if facts is None else facts
    defaults = committed_defaults(p["phase"])
    out: dict[str, Any] = {"phase": p["phase"]}
    changed = []
    for group, keys in groups(p).items():
        out[group] = {k: _shown(p, k) for k in keys}
        changed += [k for k in keys if not _same(p[k], defaults.get(k))]
    if facts:
        out["data"].update(facts)
    out["differs_from_default"] = changed
    return json.loads(json.dumps(out, default=str))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def render(p: dict[str, Any], studies: Sequence[Any] = (), facts: dict[str, Any] | None = None) -> str:
    """The run's inputs as one HTML table (marked where they differ from the defaults),
    then the studies this phase built on."""
    facts = data_facts(p) if facts is None else facts
    defaults = committed_defaults(p["phase"])
    rows = []
    for group, keys in groups(p).items():
        for k in keys:
            differs = not _same(p[k], defaults.get(k))
            mark = "&#9733; " if differs else ""
            committed = defaults.get(k) or ("a journal file in run_dir" if k == "storage" else defaults.get(k))
            default = html.escape(_fmt(committed)) if differs else ""
            style = " style='font-weight:bold'" if differs else ""
            rows.append(f"<tr><td>{group}</td><td{style}>{mark}{html.escape(k)}</td>"
                        f"<td{style}>{html.escape(_fmt(_shown(p, k)))}</td><td>{default}</td></tr>")
        if group == "data" and facts:
            for k in ("n_images", "n_classes", "fingerprint"):
                rows.append(f"<tr><td>data</td><td>{k}</td><td>{html.escape(_fmt(facts[k]))}</td><td>measured</td></tr>")
    # Headless, papermill injected the values after the parameters cell, which still shows
    # the committed defaults; in JupyterLab the cell holds what the user typed.
    headless = "" if p["interactive"] else " The parameters cell above holds the notebook's defaults, not this run's values."
    page = (
        "<p><b>Run inputs: the values this run used</b> (in the params file's names; "
        "&#9733; marks a value that differs from the notebook's committed default, shown on the right)."
        f"{headless}</p>"
        "<table class='tunewise-inputs'><thead><tr><th>group</th><th>parameter</th><th>value</th>"
        f"<th>committed default</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    if studies:
        head = list(built_on(studies)[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in head) + "</tr>"
                       for r in built_on(studies))
        page += (f"<p><b>Built on</b></p><table class='tunewise-built-on'><thead><tr>"
                 + "".join(f"<th>{html.escape(c)}</th>" for c in head) + f"</tr></thead><tbody>{body}</tbody></table>")
    return page
